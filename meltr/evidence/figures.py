"""Drawing ``tools/analyze.py``'s figures 3, 4, 6 and 7 from their numbers
(``meltr.evidence.figure_numbers``) into PNG files; Fig. 5 is drawn by ``meltr.evidence.attention``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A ``width`` x ``height`` inch figure with constrained layout, drawn without a display."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_fig3(curves: dict[str, dict[str, Any]], step: int, path: Path) -> None:
    """One subplot per task: M (left axis) and dM/dl_t (right axis) against l_t."""
    figure = new_figure(4.0 * len(curves), 3.5)
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
    figure = new_figure(7.0, 4.0)
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
    figure = new_figure(max(4.0, 1.5 * len(boxes)), 4.0)
    axes = figure.subplots()
    axes.bxp(boxes, showmeans=True)
    axes.set_ylabel("loss over the run (whiskers: min, max)")
    figure.savefig(path, dpi=100)


def plot_fig7(surface: dict[str, Any], step: int, path: Path) -> None:
    """Contours of M and of the multi-task sum over the same grid of two losses."""
    first, second = surface["tasks"]
    figure = new_figure(10.0, 4.0)
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
