"""One training command: check where it writes, build and run the trainer under the run
directory's lock, and turn what stops it into a named error (``meltr.train.cli`` maps each to its
exit code)."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin

from meltr.train import build
from meltr.train.distributed import init_distributed, shutdown_distributed
from meltr.train.loop import Trainer
from meltr.train.recipe import check_paths
from meltr.train.run_directory import RunDirectoryLock, check_output
from meltr.train.saved_checkpoints import newest_readable

# A full disk: the run stops with exit 2 and says what it kept.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class Interrupted(RuntimeError):
    """The user interrupted the run (Ctrl-C); the message says where it can continue from."""


class DiskFullError(RuntimeError):
    """Writing into the run directory failed for lack of space; what was saved before is intact
    (the message names the last checkpoint)."""


def run_training(
    run_dir: str | Path, resume: bool = False, command_line_bindings: Sequence[str] = ()
) -> dict[str, Any]:
    """Train the parsed gin recipe into ``run_dir``; return the final report (``results.json``).

    ``command_line_bindings`` (the user's ``--gin_param`` / ``--X.y=v`` bindings) must all be
    used by the run (ConfigError naming the first that is not). Under torchrun with
    ``Distributed.strategy`` "ddp" or "fsdp", ``train.batch_size`` is the global batch (split
    evenly over the ranks), every rank reads its own data, the loss values the meta network sees
    are global-batch values, checkpoints are sharded and only rank 0 logs. SIGTERM or SIGUSR1
    makes every rank checkpoint at the next step boundary and return; ``resume`` continues from
    the newest valid checkpoint (at the same or another world size, sharded checkpoints also in
    one plain process). Raises TrainingStopped (diverged), Interrupted (Ctrl-C), DiskFullError,
    ConfigError.
    """
    run_dir = Path(run_dir)
    check_output(run_dir, resume)
    settings, recipe = build.read_recipe()
    parallel = build.construct("Distributed", gin.get_configurable("Distributed"))
    check_paths(settings, needs_vocab=recipe.tokenizer is not None, splits=("train", "test"))
    context = init_distributed(parallel)
    lock = RunDirectoryLock(run_dir)
    try:
        trainer = Trainer(run_dir, resume, settings, recipe, parallel, context)
        trainer.prepare(command_line_bindings, lock)
        return trainer.run()
    except KeyboardInterrupt:
        raise Interrupted(
            f"{_kept(run_dir / 'checkpoints')}; continue with --output {run_dir} --resume"
        ) from None
    except OSError as error:
        if error.errno not in DISK_FULL:
            raise
        raise DiskFullError(
            f"cannot write {error.filename or run_dir}: {error.strerror}. "
            f"{_kept(run_dir / 'checkpoints')}; free some space and continue with --resume"
        ) from None
    finally:
        lock.release()
        shutdown_distributed()


def _kept(checkpoints: Path) -> str:
    """Which checkpoint a resumed run would continue from, in words."""
    newest = newest_readable(checkpoints)
    if newest is None:
        return "No checkpoint was saved yet (--resume starts the run again from step 0)"
    return f"The last checkpoint, {newest.path} (step {newest.step}), is intact"
