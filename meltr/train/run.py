"""One training command: check where it writes, build and run the trainer under the run
directory's lock, and turn what stops it into a named error (``meltr.train.cli`` maps each to its
exit code)."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin

from meltr.train import build
from meltr.train.checkpointing import CheckpointWriteError
from meltr.train.distributed import init_distributed, shutdown_distributed
from meltr.train.loop import Trainer
from meltr.train.recipe import check_paths
from meltr.train.run_directory import RunDirectoryLock, check_output
from meltr.train.saved_checkpoints import newest_readable

# Writes into the run directory that fail for lack of room (a full disk, a quota) or on a
# filesystem that turned read-only or failing: the run stops with exit 2 and says what it kept.
CANNOT_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


class Interrupted(RuntimeError):
    """The user interrupted the run (Ctrl-C); the message says where it can continue from."""


class CannotWriteError(RuntimeError):
    """Writing into the run directory failed (a full disk, ...); what was saved before is intact
    (the message names the last checkpoint and the free space)."""


def run_training(
    run_dir: str | Path, resume: bool = False, command_line_bindings: Sequence[str] = ()
) -> dict[str, Any]:
    """Train the parsed gin recipe into ``run_dir``; return the final report (``results.json``).

    ``command_line_bindings`` (the user's ``--gin_param`` / ``--X.y=v`` bindings) must all be
    used by the run (ConfigError naming the first that is not). Under torchrun with
    ``Distributed.strategy`` "replicate" or "fsdp", ``train.batch_size`` is the global batch (split
    evenly over the ranks), every rank reads its own data, the loss values the meta network sees
    are global-batch values, checkpoints are sharded and only rank 0 logs. SIGTERM or SIGUSR1
    makes every rank checkpoint at the next step boundary and return; ``resume`` continues from
    the newest valid checkpoint (at the same or another world size, sharded checkpoints also in
    one plain process). Raises TrainingStopped (diverged), Interrupted (Ctrl-C), CannotWriteError
    (a full disk), ConfigError.
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
    except (CheckpointWriteError, OSError) as error:
        if isinstance(error, OSError) and error.errno not in CANNOT_WRITE:
            raise
        raise CannotWriteError(
            f"{error} ({_free_space(run_dir)} free there). {_kept(run_dir / 'checkpoints')}; "
            "make room (or fix the filesystem) and continue with --resume"
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


def _free_space(directory: Path) -> str:
    """The free space of the filesystem holding ``directory``, in words."""
    free = shutil.disk_usage(directory if directory.exists() else directory.parent).free
    return f"{free / 2**20:.1f} MiB"
