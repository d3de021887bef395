"""``tools/train.py``: parse the command line, configure gin, run ``train``.

    python tools/train.py --gin gin/quickstart.gin
    python tools/train.py --gin gin/allinone_msrvtt.gin --gin_param "DATA_DIR='/data/msrvtt'" \\
        --MetaLearner.solver=@Neumann() --output runs/neumann
    python tools/train.py --output runs/neumann --resume

Exit codes: 0 done, 2 configuration error (nothing was read, built or written).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from meltr.train.config import ConfigError, parse_gin, sweep_args_to_bindings
from meltr.train.configurables import train

CONFIG_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune a video backbone with MELTR from a gin recipe. Any further "
        "--Configurable.param=value (or --Configurable.param value) argument is a gin binding "
        "(the form W&B sweep agents pass), applied after --gin files and --gin_param bindings.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--gin",
        "--gin_file",
        dest="gin_files",
        action="append",
        default=[],
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
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="run directory (default: runs/<first recipe>-<timestamp>)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output from checkpoints/last.pt; without --gin, its "
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run training from command-line arguments; return the process exit code."""
    args, extra = build_parser().parse_known_args(argv)
    try:
        gin_files, run_dir = resolve_run(args.gin_files, args.output, args.resume)
        parse_gin(gin_files, [*args.bindings, *sweep_args_to_bindings(extra)])
        train(run_dir, resume=args.resume)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return CONFIG_ERROR
    return 0
