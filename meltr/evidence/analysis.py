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

Exit codes: 0 written; 2 the run has no steps.jsonl (or no finite loss in it), the requested
snapshot or tasks do not exist, or config.gin does not rebuild the snapshot's meta network.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gin
import numpy as np
import torch
import wandb
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from meltr.evidence.attention import (
    attention_maps,
    has_attention,
    observed_loss_vectors,
    plot_fig5,
)
from meltr.train import build
from meltr.train.cli import run_command
from meltr.train.config import ConfigError, parse_gin
from meltr.train.run_log import read_jsonl, wandb_mode

ANALYSIS = "analysis"
STEPS = f"{ANALYSIS}/steps.jsonl"
SNAPSHOTS = f"{ANALYSIS}/meta_loss"
FIGURES_JSON = f"{ANALYSIS}/figures.json"
PNG = {
    "fig3": "fig3_meta_loss_per_task.png",
    "fig4": "fig4_dM_dl_over_training.png",
    "fig5": "fig5_attention_between_losses.png",
    "fig6": "fig6_loss_ranges.png",
    "fig7": "fig7_meta_loss_surface.png",
}


class AnalysisError(ConfigError):
    """The run directory lacks what the analysis needs, or an option does not fit it (exit 2)."""


# ---------------------------------------------------------------- reading the run


@dataclass(frozen=True)
class StepRecords:
    """The per-step series of ``analysis/steps.jsonl``.

    ``tasks`` in logged order (primary first); ``steps`` ``[N]``; ``losses[t]`` and
    ``dmeta_dl[t]`` ``[N]`` float64, NaN where a record has null or lacks the key. ``dmeta_dl``
    holds only the tasks whose dM/dl was logged at least once.
    """

    tasks: list[str]
    steps: np.ndarray
    losses: dict[str, np.ndarray]
    dmeta_dl: dict[str, np.ndarray]


def read_steps(run_dir: Path) -> StepRecords:
    """The run's ``analysis/steps.jsonl``; AnalysisError naming the file when it is missing or
    has no ``loss/<task>`` with a finite value."""
    path = run_dir / STEPS
    if not path.is_file():
        raise AnalysisError(f"{path} does not exist: not a run directory written by tools/train.py")
    records = read_jsonl(path)
    keys = list(dict.fromkeys(key for record in records for key in record))
    tasks = [key.removeprefix("loss/") for key in keys if key.startswith("loss/")]
    if not tasks:
        raise AnalysisError(f"{path} has no loss/<task> values")

    def column(key: str) -> np.ndarray:
        return np.array([record.get(key) for record in records], dtype=np.float64)

    losses = {task: column(f"loss/{task}") for task in tasks}
    for task, values in losses.items():
        if not np.isfinite(values).any():
            raise AnalysisError(f"{path}: loss/{task} has no finite value")
    return StepRecords(
        tasks=tasks,
        steps=np.array([record["step"] for record in records], dtype=np.int64),
        losses=losses,
        dmeta_dl={task: column(f"dM/dl/{task}") for task in tasks if f"dM/dl/{task}" in keys},
    )


def find_snapshot(run_dir: Path, step: int | None = None) -> Path | None:
    """The snapshot of ``step``, or the newest one when ``step`` is None (None when there are
    none). AnalysisError listing the snapshots when ``step`` has none."""
    directory = run_dir / SNAPSHOTS
    paths = sorted(directory.glob("step-*.pt")) if directory.is_dir() else []
    if step is None:
        return paths[-1] if paths else None
    path = directory / f"step-{step:08d}.pt"
    if not path.is_file():
        names = ", ".join(p.name for p in paths) or "none"
        raise AnalysisError(f"{path} does not exist (snapshots: {names})")
    return path


def snapshot_step(path: Path) -> int:
    """The training step of a snapshot file ``step-XXXXXXXX.pt``."""
    return int(path.stem.removeprefix("step-"))


def load_meta_loss(config: Path, snapshot: Path, tasks: list[str]) -> nn.Module:
    """The meta network of the run: ``Recipe.meta_loss(num_tasks=len(tasks))`` from ``config``
    (a run's config.gin) with the ``snapshot``'s weights, in float64 and eval mode.

    AnalysisError when the snapshot's tasks differ from ``tasks`` (steps.jsonl's), the config does
    not bind ``Recipe.meta_loss`` or the weights do not fit the network it builds.
    """
    saved = torch.load(snapshot, map_location="cpu", weights_only=True)
    if saved["tasks"] and list(saved["tasks"]) != tasks:
        raise AnalysisError(f"{snapshot} has tasks {saved['tasks']}, steps.jsonl has {tasks}")
    parse_gin([str(config)], [], saved=True)
    try:
        reference = gin.query_parameter("Recipe.meta_loss")
    except ValueError:
        reference = None
    if not isinstance(reference, gin.config.ConfigurableReference):
        raise AnalysisError(f"{config} does not bind Recipe.meta_loss to a configurable")
    factory = gin.get_configurable(reference.scoped_selector)
    network = build.construct("Recipe.meta_loss", factory, num_tasks=len(tasks))
    try:
        network.load_state_dict(saved["state_dict"])
    except RuntimeError as error:
        raise AnalysisError(
            f"{snapshot} does not fit the meta network of {config}: {error}"
        ) from None
    return network.to(torch.float64).eval()


# ---------------------------------------------------------------- the numbers


def loss_statistics(values: np.ndarray, percentiles: tuple[float, float]) -> dict[str, float]:
    """Summary of the finite ``values``: count, mean, min, q1, median, q3, max, and ``low`` /
    ``high`` at ``percentiles`` (numpy's linear interpolation)."""
    finite = values[np.isfinite(values)]
    low, q1, median, q3, high = np.percentile(finite, [percentiles[0], 25, 50, 75, percentiles[1]])
    return {
        "count": int(finite.size),
        "mean": float(finite.mean()),
        "min": float(finite.min()),
        "q1": float(q1),
        "median": float(median),
        "q3": float(q3),
        "max": float(finite.max()),
        "low": float(low),
        "high": float(high),
    }


def value_range(statistics: dict[str, float]) -> tuple[float, float]:
    """``(low, high)`` of ``loss_statistics``, widened by 5% of its magnitude (at least 0.05)
    around a loss that barely moved."""
    low, high = statistics["low"], statistics["high"]
    if high - low > 1e-12 * max(abs(low), abs(high), 1.0):
        return low, high
    pad = 0.05 * max(abs(low), 1.0)
    return low - pad, high + pad


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean: element i is the mean of ``values[max(0, i - window + 1) : i + 1]``."""
    sums = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def dmeta_dl_series(records: StepRecords, window: int | None) -> dict[str, dict[str, Any]]:
    """Fig. 4: per task, the steps with a finite dM/dl, its values and their ``moving_average``
    over ``window`` points (default: a twentieth of them, at least 1)."""
    series = {}
    for task, values in records.dmeta_dl.items():
        finite = np.isfinite(values)
        width = window or max(1, int(finite.sum()) // 20)
        series[task] = {
            "step": records.steps[finite],
            "value": values[finite],
            "moving_average": moving_average(values[finite], width),
            "window": width,
        }
    return series


def meta_loss_and_gradient(network: nn.Module, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``M`` ``[N]`` and ``dM/dl`` ``[N, T]`` (autograd, float64) of ``network`` at the rows of
    ``losses`` ``[N, T]``; dM/dl is zero where M does not depend on the losses."""
    inputs = torch.tensor(losses, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        try:
            values = network(inputs)
        except ValueError as error:
            raise AnalysisError(f"the meta network refuses the plotted losses: {error}") from None
        gradient = None
        if values.requires_grad:
            (gradient,) = torch.autograd.grad(values.sum(), inputs, allow_unused=True)
    gradient = torch.zeros_like(inputs) if gradient is None else gradient
    return values.detach().numpy(), gradient.numpy()


def held_losses(
    tasks: list[str], statistics: dict[str, dict[str, float]], points: int
) -> np.ndarray:
    """``[points, T]`` rows of every task's median loss (the values other losses are held at)."""
    return np.tile([statistics[task]["median"] for task in tasks], (points, 1))


def per_task_curves(
    network: nn.Module,
    tasks: list[str],
    statistics: dict[str, dict[str, float]],
    points: int,
) -> dict[str, dict[str, Any]]:
    """Fig. 3: per task t, ``x`` (``points`` values of l_t over ``value_range``), ``M`` and
    ``dM_dl`` (= dM/dl_t) there, and ``held`` (the other tasks' medians, at which they are held)."""
    curves = {}
    for index, task in enumerate(tasks):
        losses = held_losses(tasks, statistics, points)
        losses[:, index] = np.linspace(*value_range(statistics[task]), points)
        values, gradient = meta_loss_and_gradient(network, losses)
        curves[task] = {
            "x": losses[:, index],
            "M": values,
            "dM_dl": gradient[:, index],
            "held": {other: statistics[other]["median"] for other in tasks if other != task},
        }
    return curves


def meta_loss_surface(
    network: nn.Module,
    tasks: list[str],
    pair: tuple[str, str],
    statistics: dict[str, dict[str, float]],
    points: int,
) -> dict[str, Any]:
    """Fig. 7: ``x`` / ``y`` (``points`` values of l_A / l_B over ``value_range``), ``M[i][j]``
    and ``sum[i][j]`` (the sum of all losses) at ``l_A = x[j], l_B = y[i]``, the other tasks at
    their medians (``held``)."""
    first, second = (tasks.index(task) for task in pair)
    x = np.linspace(*value_range(statistics[pair[0]]), points)
    y = np.linspace(*value_range(statistics[pair[1]]), points)
    grid_x, grid_y = np.meshgrid(x, y)
    losses = held_losses(tasks, statistics, grid_x.size)
    losses[:, first], losses[:, second] = grid_x.ravel(), grid_y.ravel()
    values, _ = meta_loss_and_gradient(network, losses)
    return {
        "tasks": list(pair),
        "x": x,
        "y": y,
        "M": values.reshape(grid_x.shape),
        "sum": losses.sum(axis=1).reshape(grid_x.shape),
        "held": {task: statistics[task]["median"] for task in tasks if task not in pair},
    }


# ---------------------------------------------------------------- the figures


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_fig3(curves: dict[str, dict[str, Any]], step: int, path: Path) -> None:
    """One subplot per task: M (left axis) and dM/dl_t (right axis) against l_t."""
    figure = _figure(4.0 * len(curves), 3.5)
    for axes, (task, curve) in zip(
        figure.subplots(1, len(curves), squeeze=False)[0], curves.items(), strict=True
    ):
        axes.plot(curve["x"], curve["M"], color="C0", label="M")
        axes.set_xlabel(f"l_{task}")
        axes.set_ylabel("M", color="C0")
        axes.set_title(task)
        gradient_axes = axes.twinx()
        gradient_axes.plot(curve["x"], curve["dM_dl"], color="C1", linestyle="--")
        gradient_axes.set_ylabel(f"dM/dl_{task}", color="C1")
    figure.suptitle(f"meta loss at step {step} (the other losses at their run medians)")
    figure.savefig(path, dpi=100)


def plot_fig4(series: dict[str, dict[str, Any]], path: Path) -> None:
    """dM/dl per task against the training step: raw (light) and moving average."""
    figure = _figure(7.0, 4.0)
    axes = figure.subplots()
    for color, (task, data) in enumerate(series.items()):
        axes.plot(data["step"], data["value"], color=f"C{color}", alpha=0.25, linewidth=0.8)
        axes.plot(
            data["step"],
            data["moving_average"],
            color=f"C{color}",
            label=f"{task} (mean of {data['window']})",
        )
    axes.set_xlabel("training step")
    axes.set_ylabel("dM/dl")
    axes.legend()
    figure.savefig(path, dpi=100)


def plot_fig6(statistics: dict[str, dict[str, float]], path: Path) -> None:
    """Per task a box (quartiles, median, mean) with whiskers at the minimum and maximum."""
    boxes = [
        {
            "label": task,
            "whislo": s["min"],
            "q1": s["q1"],
            "med": s["median"],
            "q3": s["q3"],
            "whishi": s["max"],
            "mean": s["mean"],
            "fliers": [],
        }
        for task, s in statistics.items()
    ]
    figure = _figure(max(4.0, 1.5 * len(boxes)), 4.0)
    axes = figure.subplots()
    axes.bxp(boxes, showmeans=True)
    axes.set_ylabel("loss over the run (whiskers: min, max)")
    figure.savefig(path, dpi=100)


def plot_fig7(surface: dict[str, Any], step: int, path: Path) -> None:
    """Contours of M and of the multi-task sum over the same grid of two losses."""
    first, second = surface["tasks"]
    figure = _figure(10.0, 4.0)
    panels = zip(
        figure.subplots(1, 2),
        ("M", "sum"),
        (f"meta loss M (step {step})", "multi-task sum of the losses"),
        strict=True,
    )
    for axes, key, title in panels:
        contours = axes.contourf(surface["x"], surface["y"], surface[key], levels=20)
        figure.colorbar(contours, ax=axes)
        axes.set_xlabel(f"l_{first}")
        axes.set_ylabel(f"l_{second}")
        axes.set_title(title)
    figure.savefig(path, dpi=100)


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
