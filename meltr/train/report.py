"""A finished run's report, ``results.json`` (see ``meltr.train.loop``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meltr.train.checkpointing import Progress


def test_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The ``test/`` entries of ``metrics``."""
    return {key: value for key, value in metrics.items() if key.startswith("test/")}


def results_report(
    selection: str,
    higher_is_better: bool,
    progress: Progress,
    final_metrics: Mapping[str, float],
) -> dict[str, Any]:
    """``results.json``'s content: how the best checkpoint was selected (``selection``, the
    metric, and whether higher is better), the test metrics of the last step (``final_metrics``)
    and of the selected checkpoint, and the training steps' wall time (``time``: ``step_seconds``,
    of which ``meta_seconds`` in meta steps)."""
    return {
        "selection": {
            "metric": selection,
            "higher_is_better": higher_is_better,
            "best_step": progress.best_step,
            "best_value": progress.best_value,
        },
        "last": {"step": progress.step, **test_metrics(final_metrics)},
        "best": {"step": progress.best_step, **test_metrics(progress.best_metrics)},
        "time": {
            "step_seconds": progress.totals.get("time/step_seconds", 0.0),
            "meta_seconds": progress.totals.get("time/meta_seconds", 0.0),
        },
    }
