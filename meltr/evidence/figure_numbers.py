"""The numbers behind ``tools/analyze.py``'s figures 3, 4, 6 and 7 (float64 throughout).

Fig. 6 summarises each task's logged losses (``loss_statistics``); Fig. 4 smooths the logged dM/dl
(``dmeta_dl_series``); Figs. 3 and 7 evaluate the meta network over a range of one loss
(``per_task_curves``) or a grid of two (``meta_loss_surface``), the other losses held at their
run medians.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from meltr.evidence.run_files import AnalysisError, StepRecords


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
