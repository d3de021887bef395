"""``tools/compare.py``: a recipe under several methods x seeds, then the table, CSV and plot.

    python tools/compare.py --gin gin/quickstart.gin --seeds 3 --output runs/compare \\
        --method single-task=gin/baselines/single_task.gin \\
        --method multi-task=gin/baselines/mtl.gin --method meltr= --train.steps=200 \\
        [--jobs 2] [--method famo:2=gin/baselines/famo.gin]

Writes ``OUTPUT/<method>/seed-<k>/`` (the runs), ``OUTPUT/results.csv`` (one row per run),
``OUTPUT/results.md`` (the tables) and ``OUTPUT/results.png``. Repeating the command resumes it.
Exit codes: 0 every run finished; 1 some run failed (the others are reported); 2 a configuration
error (found before any run starts, or by the first run).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import meltr.train.configurables  # noqa: F401  (the gin registrations)
from meltr.evidence import results as tables
from meltr.evidence.compare import make_plan, open_output, run_all
from meltr.train.cli import add_recipe_arguments, run_command
from meltr.train.config import ConfigError

BASELINE = "multi-task"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train a recipe under several methods and seeds and compare them. Further "
        "--Configurable.param=value arguments apply to every run.",
        allow_abbrev=False,
    )
    add_recipe_arguments(parser, required=True)
    parser.add_argument(
        "--method",
        dest="methods",
        action="append",
        default=[],
        metavar="NAME=SPEC[;SPEC...]",
        help="a method: SPECs are gin files or X.y=value bindings; 'NAME=' is the recipe as is",
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (train.seed)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time (each run's threads: --train.num_threads; default 1 run)",
    )
    parser.add_argument("--output", type=Path, required=True, help="comparison directory")
    parser.add_argument(
        "--metric",
        default=None,
        help="headline column of results.csv (default: best/test/<selection metric>)",
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help=f"method the others are tested against (default: {BASELINE!r} when present)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = build_parser().parse_known_args(argv)

    def body() -> int:
        plan = make_plan(args.gin_files, args.bindings, extra, args.methods, args.seeds)
        names = [method.name for method in plan.methods]
        baseline = args.baseline or (BASELINE if BASELINE in names else None)
        if baseline is not None and baseline not in names:
            raise ConfigError(f"--baseline {baseline!r} is not a method ({', '.join(names)})")
        if args.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
        open_output(args.output, plan)
        outcomes = run_all(plan, args.output, args.jobs)
        finished = [o for o in outcomes if o.status != "failed"]
        failed = [
            f"{o.method} seed {o.seed}: exit {o.returncode}, log {o.log}"
            for o in outcomes
            if o.status == "failed"
        ]
        if not finished:
            print("no run finished:\n" + "\n".join(failed), file=sys.stderr)
            return 1
        results = [tables.read_run(o.method, o.seed, o.run_dir) for o in finished]
        metric = args.metric or tables.headline_metric(results)
        command = shlex.join(["python", "tools/compare.py", *argv])
        tables.write_csv(results, args.output / "results.csv")
        tables.write_markdown(
            results, args.output / "results.md", metric, baseline, command, failed
        )
        tables.plot(results, args.output / "results.png", metric)
        print(tables.markdown_table(results, metric, baseline))
        print(f"results: {args.output / 'results.md'}, results.csv, results.png")
        if failed:
            print("runs that failed:\n" + "\n".join(failed), file=sys.stderr)
        return 1 if failed else 0

    return run_command(body)
