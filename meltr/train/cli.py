"""``tools/train.py``: parse the command line, configure gin, run the training.

    python tools/train.py --gin gin/quickstart.gin
    python tools/train.py --gin RECIPE.gin --gin_param "DATA_DIR='/data/shards'" \\
        --MetaLearner.solver=@Neumann() --output runs/neumann
    python tools/train.py --output runs/neumann --resume

Exit codes: 0 done (or stopped by a preemption signal, resumable); 1 the run stopped itself
(diverged: non-finite values; the last good checkpoint is kept); 2 configuration or data error
(found before anything was written, or an unusable data stream), or a run directory that cannot be
written (a full disk; what was saved before is intact and named); 130 interrupted by Ctrl-C (the
message says from which checkpoint --resume continues).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import meltr.train.configurables  # noqa: F401  (the gin registrations)
from meltr.data.stream import NoUsableSamplesError
from meltr.train.config import ConfigError, parse_gin, sweep_args_to_bindings
from meltr.train.divergence import TrainingStopped
from meltr.train.run import CannotWriteError, Interrupted, run_training

CONFIG_ERROR = 2
STOPPED = 1
INTERRUPTED = 130  # the shell's code for a process ended by Ctrl-C (128 + SIGINT)


def add_recipe_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """``--gin FILE`` (repeatable) and ``--gin_param BINDING`` (repeatable)."""
    parser.add_argument(
        "--gin",
        "--gin_file",
        dest="gin_files",
        action="append",
        default=[],
        required=required,
        metavar="FILE",
        help="gin recipe file (repeatable; later files override earlier ones)",
    )
    parser.add_argument(
        "--gin_param",
        dest="bindings",
        action="append",
        default=[],
        metavar="BINDING",
        help='gin binding such as "MetaLearner.gamma = 0.2" (repeatable)',
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune a backbone with MELTR from a gin recipe. Any further "
        "--Configurable.param=value (or --Configurable.param value) argument is a gin binding "
        "(the form W&B sweep agents pass), applied after --gin files and --gin_param bindings.",
        allow_abbrev=False,
    )
    add_recipe_arguments(parser)
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="run directory (default: runs/<first recipe>-<timestamp>); must not hold a run "
        "unless --resume",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from its newest valid checkpoint; without --gin, its "
        "config.gin is the recipe",
    )
    return parser


def resolve_run(gin_files: list[str], output: Path | None, resume: bool) -> tuple[list[str], Path]:
    """The gin files to parse and the run directory, from the command-line options."""
    if resume:
        if output is None:
            raise ConfigError("--resume needs --output RUN_DIR (the run to continue)")
        if not gin_files:
            config = output / "config.gin"
            if not config.is_file():
                raise ConfigError(f"--resume without --gin: {config} does not exist")
            gin_files = [str(config)]
        return gin_files, output
    if not gin_files:
        raise ConfigError("no recipe: pass --gin FILE (e.g. --gin gin/quickstart.gin)")
    if output is None:
        output = Path("runs") / f"{Path(gin_files[0]).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    return gin_files, output


def configure(
    gin_files: Sequence[str], bindings: Sequence[str], extra: Sequence[str], saved: bool = False
) -> list[str]:
    """Parse the recipe files and bindings into gin; return the command-line bindings (the
    ``--gin_param`` ones, then the sweep-style ones), which a run must all use. ``saved``: the
    file is a run's ``config.gin`` (``parse_gin``)."""
    command_line = [*bindings, *sweep_args_to_bindings(extra)]
    parse_gin(gin_files, command_line, saved=saved)
    return command_line


def run_command(body: Callable[[], int]) -> int:
    """Run a command's ``body`` with the shared error handling: exit 2 and the message for a
    configuration or data error, 1 for a run that stopped itself."""
    try:
        return body()
    except (ConfigError, NoUsableSamplesError) as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return CONFIG_ERROR
    except CannotWriteError as error:
        print(f"cannot write: {error}", file=sys.stderr)
        return CONFIG_ERROR
    except TrainingStopped as error:
        print(f"training stopped: {error}", file=sys.stderr)
        return STOPPED
    except Interrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Run training from command-line arguments; return the process exit code."""
    args, extra = build_parser().parse_known_args(argv)

    def body() -> int:
        gin_files, run_dir = resolve_run(args.gin_files, args.output, args.resume)
        saved = args.resume and not args.gin_files  # the run's own config.gin is the recipe
        command_line = configure(gin_files, args.bindings, extra, saved=saved)
        run_training(run_dir, resume=args.resume, command_line_bindings=command_line)
        return 0

    return run_command(body)
