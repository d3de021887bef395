"""``tools/analyze.py RUN_DIR``: the MELTR paper's analysis figures from a finished run.

Reads ``RUN_DIR/analysis/steps.jsonl`` (the per-step losses and dM/dl the training loop logged), the
newest meta-network snapshot in ``RUN_DIR/analysis/meta_loss/`` (or ``--snapshot STEP``) and
``RUN_DIR/config.gin`` (to rebuild that network), and writes into ``RUN_DIR/analysis/``:

- ``fig3_meta_loss_per_task.png``: per task t, M and dM/dl_t (autograd) against l_t over the
  run's observed range of l_t (``--percentiles``, default the 1st to 99th), the other losses at
  their medians over the run (the paper's Fig. 3);
- ``fig4_dM_dl_over_training.png``: the logged dM/dl_t over the training steps, raw and as a
  trailing moving average (Fig. 4);
- ``fig5_attention_between_losses.png``: the meta network's self-attention probabilities between
  the loss tokens, per head and averaged over heads, at the run's logged loss vectors (Fig. 5;
  ``meltr.evidence.attention`` says what it follows);
- ``fig6_loss_ranges.png``: each task's loss over the run as a box (quartiles, median, mean) with
  whiskers at the minimum and maximum (Fig. 6);
- ``fig7_meta_loss_surface.png``: contours of M over a grid of two losses (``--tasks A B``, the
  others at their medians) beside the multi-task sum of all losses on the same grid (Fig. 7);
- ``figures.json``: every plotted number (see ``analyze_run``).

Figures 3, 5 and 7 are skipped when the run has no snapshot or no config.gin, Fig. 5 also for
a meta loss without attention (the weighting baselines), Fig. 7 for a single task, and Fig. 4
when steps.jsonl has no dM/dl; figures.json's ``skipped`` says why. The
figures are logged to W&B as images (run ``<run dir name>-analysis``, job type ``analysis``).
Every computation is in float64.

This module runs the analysis and its command line; ``meltr.evidence.run_files`` reads the run,
``meltr.evidence.figure_numbers`` computes the figures' numbers, ``meltr.evidence.figures`` (and
``meltr.evidence.attention`` for Fig. 5) draws them.

Exit codes: 0 written; 2 the run has no steps.jsonl (or no finite loss in it), the requested
snapshot or tasks do not exist, or config.gin does not rebuild the snapshot's meta network.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import wandb
from torch import nn

from meltr.evidence.attention import (
    attention_maps,
    has_attention,
    observed_loss_vectors,
    plot_fig5,
)
from meltr.evidence.figure_numbers import (
    dmeta_dl_series,
    loss_statistics,
    meta_loss_surface,
    per_task_curves,
)
from meltr.evidence.figures import plot_fig3, plot_fig4, plot_fig6, plot_fig7
from meltr.evidence.run_files import (
    ANALYSIS,
    SNAPSHOTS,
    STEPS,
    AnalysisError,
    find_snapshot,
    load_meta_loss,
    read_steps,
    snapshot_step,
)
from meltr.train.cli import run_command
from meltr.train.run_log import wandb_mode

FIGURES_JSON = f"{ANALYSIS}/figures.json"
PNG = {
    "fig3": "fig3_meta_loss_per_task.png",
    "fig4": "fig4_dM_dl_over_training.png",
    "fig5": "fig5_attention_between_losses.png",
    "fig6": "fig6_loss_ranges.png",
    "fig7": "fig7_meta_loss_surface.png",
}


# ---------------------------------------------------------------- the whole analysis


def _to_json(value: Any) -> Any:
    """``value`` with arrays as (nested) lists and non-finite floats as None."""
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_to_json(item) for item in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _check_options(
    tasks: list[str],
    pair: Sequence[str] | None,
    percentiles: tuple[float, float],
    sizes: dict[str, int | None],
) -> None:
    for name, size in sizes.items():
        if size is not None and size < (1 if name == "--window" else 2):
            raise AnalysisError(f"{name} is too small: {size}")
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise AnalysisError(f"--percentiles must be 0 <= LOW < HIGH <= 100, got {percentiles}")
    if pair is not None:
        unknown = [task for task in pair if task not in tasks]
        if unknown or len(set(pair)) != 2:
            raise AnalysisError(f"--tasks needs two different tasks of the run {tasks}, got {pair}")


def analyze_run(
    run_dir: Path,
    snapshot: int | None = None,
    pair: Sequence[str] | None = None,
    percentiles: tuple[float, float] = (1.0, 99.0),
    points: int = 101,
    grid: int = 41,
    window: int | None = None,
) -> dict[str, Any]:
    """Write the figures and ``analysis/figures.json`` of ``run_dir``; return figures.json's dict.

    Its keys: ``tasks``; ``snapshot`` (``{"path", "step"}`` or None); ``percentiles``; ``fig6``
    (``loss_statistics`` per task); ``fig4`` (``dmeta_dl_series``); ``fig3``
    (``per_task_curves``); ``fig5`` (``attention_maps`` at the logged loss vectors); ``fig7``
    (``meta_loss_surface`` of ``pair``, default the first two tasks); ``png`` (figure -> file
    written); ``skipped`` (figure -> why it was not drawn). ``snapshot`` picks the step of the
    meta network (default the newest); ``points`` / ``grid`` are the Fig. 3 curve's / Fig. 7
    grid's values per axis; ``window`` is Fig. 4's moving average width. AnalysisError (exit 2)
    as the module docstring says.
    """
    records = read_steps(run_dir)
    tasks = records.tasks
    _check_options(
        tasks, pair, percentiles, {"--points": points, "--grid": grid, "--window": window}
    )
    statistics = {task: loss_statistics(records.losses[task], percentiles) for task in tasks}
    result: dict[str, Any] = {
        "tasks": tasks,
        "snapshot": None,
        "percentiles": list(percentiles),
        "fig6": statistics,
        "png": {},
        "skipped": {},
    }
    if records.dmeta_dl:
        result["fig4"] = dmeta_dl_series(records, window)
    else:
        result["skipped"]["fig4"] = f"{run_dir / STEPS} has no dM/dl/<task> values"
    snapshot_path = find_snapshot(run_dir, snapshot)
    config = run_dir / "config.gin"
    if snapshot_path is None or not config.is_file():
        missing = (
            f"no snapshot in {run_dir / SNAPSHOTS}" if snapshot_path is None else f"no {config}"
        )
        result["skipped"] |= {"fig3": missing, "fig5": missing, "fig7": missing}
    else:
        network = load_meta_loss(config, snapshot_path, tasks)
        result["snapshot"] = {"path": str(snapshot_path), "step": snapshot_step(snapshot_path)}
        observed = observed_loss_vectors(records.losses, tasks)
        _add_meta_network_figures(result, network, pair, statistics, observed, points, grid)
    _draw(run_dir, result)
    (run_dir / FIGURES_JSON).write_text(json.dumps(_to_json(result), indent=1) + "\n")
    return result


def _add_meta_network_figures(
    result: dict[str, Any],
    network: nn.Module,
    pair: Sequence[str] | None,
    statistics: dict[str, dict[str, float]],
    observed: np.ndarray,
    points: int,
    grid: int,
) -> None:
    """Add ``fig3`` to ``result``; ``fig5`` at the ``observed`` loss vectors ``[N, T]``; and
    ``fig7`` of ``pair`` (default the first two tasks); or the reasons they are skipped."""
    tasks = result["tasks"]
    result["fig3"] = per_task_curves(network, tasks, statistics, points)
    if not has_attention(network):
        kind = type(network).__name__
        result["skipped"]["fig5"] = f"the meta loss ({kind}) has no attention between losses"
    elif not len(observed):
        result["skipped"]["fig5"] = "no logged step has every loss finite"
    else:
        result["fig5"] = attention_maps(network, observed)
    if len(tasks) < 2:
        result["skipped"]["fig7"] = f"the run has one task ({tasks[0]}); Fig. 7 needs two"
    else:
        chosen = (pair[0], pair[1]) if pair is not None else (tasks[0], tasks[1])
        result["fig7"] = meta_loss_surface(network, tasks, chosen, statistics, grid)


def _draw(run_dir: Path, result: dict[str, Any]) -> None:
    """Plot every figure ``result`` has numbers for; record the files in ``result["png"]``."""
    step = result["snapshot"]["step"] if result["snapshot"] else None
    drawers = {
        "fig3": lambda data, path: plot_fig3(data, step, path),
        "fig4": plot_fig4,
        "fig5": lambda data, path: plot_fig5(data, result["tasks"], step, path),
        "fig6": plot_fig6,
        "fig7": lambda data, path: plot_fig7(data, step, path),
    }
    for name, draw in drawers.items():
        if name in result:
            path = run_dir / ANALYSIS / PNG[name]
            draw(result[name], path)
            result["png"][name] = str(path)


def log_figures(run_dir: Path, pngs: dict[str, str]) -> None:
    """Log the figure files to a W&B run ``<run dir name>-analysis`` (job type ``analysis``)
    under ``analysis/<figure>``."""
    run = wandb.init(
        dir=str(run_dir),
        mode=wandb_mode(),
        name=f"{run_dir.name}-analysis",
        job_type="analysis",
    )
    run.log({f"analysis/{name}": wandb.Image(path) for name, path in pngs.items()})
    run.finish()


# ---------------------------------------------------------------- the command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Draw the MELTR paper's analysis figures (3 to 7) of a finished run into "
        "RUN_DIR/analysis/, with their numbers in RUN_DIR/analysis/figures.json.",
        allow_abbrev=False,
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run's --output folder")
    parser.add_argument(
        "--snapshot",
        type=int,
        default=None,
        metavar="STEP",
        help="the meta-network snapshot of this step (default: the newest)",
    )
    parser.add_argument(
        "--tasks",
        nargs=2,
        default=None,
        metavar=("A", "B"),
        help="the two losses of Fig. 7's grid (default: the run's first two tasks)",
    )
    parser.add_argument(
        "--percentiles",
        nargs=2,
        type=float,
        default=(1.0, 99.0),
        metavar=("LOW", "HIGH"),
        help="the range of each loss plotted in Figs. 3 and 7 (default: 1 99)",
    )
    parser.add_argument("--points", type=int, default=101, help="Fig. 3 points per curve")
    parser.add_argument("--grid", type=int, default=41, help="Fig. 7 grid points per axis")
    parser.add_argument(
        "--window", type=int, default=None, help="Fig. 4 moving-average width (default: N/20)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Analyze the run named on the command line; return the process exit code (0, or 2 for a
    run that lacks what the analysis needs)."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        result = analyze_run(
            args.run_dir,
            snapshot=args.snapshot,
            pair=args.tasks,
            percentiles=tuple(args.percentiles),
            points=args.points,
            grid=args.grid,
            window=args.window,
        )
        log_figures(args.run_dir, result["png"])
        for name, path in result["png"].items():
            print(f"{name}: {path}")
        for name, reason in result["skipped"].items():
            print(f"{name} skipped: {reason}")
        print(f"plotted numbers: {args.run_dir / FIGURES_JSON}")
        return 0

    return run_command(body)
