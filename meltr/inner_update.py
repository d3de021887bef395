"""The inner update on the training step's pass: w descends ``sum_t weight_t * grad l_t`` with
the per-task weights from ``dM/dl``, or the per-task rows combined by a gradient-aggregation
baseline. Gradients go into the weights' ``.grad`` (through ``backward()``, so data-parallel
wrappers reduce them in their hooks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from meltr.gradients import NamedParams, combine, reached_parameters, task_gradients
from meltr.guards import all_finite, check_parameters_finite, first_nonfinite
from meltr.meta_network import MetaNetwork
from meltr.objective import Pass
from meltr.products import refuse_data_parallel

Aggregate = Callable[[list[list[torch.Tensor]]], tuple[list[torch.Tensor], torch.Tensor | None]]


def check_aggregate(aggregate: object, meta_optimizer: object) -> None:
    """ValueError unless ``aggregate`` is None or callable, and None with a meta optimizer."""
    if aggregate is not None and not callable(aggregate):
        raise ValueError(f"aggregate must be callable or None, got {aggregate!r}")
    if aggregate is not None and meta_optimizer is not None:
        raise ValueError(
            "aggregate replaces the inner update's gradient, while a meta step assumes the "
            "update descends the meta loss: gradient aggregation needs meta_optimizer=None "
            "(Recipe.meta_optimizer = None)"
        )


def task_weights(dmeta_dl: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The per-task weights of the inner update's gradient: ``dM/dl``, or with ``normalize``
    ``dM/dl / mean_t |dM/dl_t|`` (left as is when every ``dM/dl_t`` is 0)."""
    if not normalize:
        return dmeta_dl
    scale = dmeta_dl.abs().mean()
    return dmeta_dl / scale if bool(scale > 0) else dmeta_dl


def set_gradient(current: Pass, params: NamedParams, weights: torch.Tensor) -> None:
    """Set each weight's ``.grad`` to ``sum_t weights_t * dl_t/dw`` at ``current``: one backward
    through its graph, or, when a hypergradient has taken its per-task gradients, their
    combination (the same backward, already taken task by task)."""
    for _, p in params:
        p.grad = None
    if current.task_gradients is None:
        current.values.backward(weights.to(current.values.dtype))
        return
    for (_, p), grad in zip(params, combine(weights.tolist(), current.task_gradients), strict=True):
        p.grad = grad


def set_aggregated_gradient(
    current: Pass,
    params: NamedParams,
    weights: torch.Tensor,
    aggregate: Aggregate,
    keys: Sequence[str],
) -> dict[str, float]:
    """Set each weight's ``.grad`` through ``aggregate`` (``MetaLearner(aggregate=...)``): the
    rows ``r_t = weights_t * dl_t/dw``, one backward per task, combined by ``aggregate(rows) ->
    (gradient, row weights)`` on the shared parameters (those the losses of two or more tasks
    reach), a parameter one task alone reaches taking that task's row and one no task reaches
    no gradient. Returns the row weights as ``aggregate/weight/<task>`` (none when
    ``aggregate`` gives None). Single process only."""
    refuse_data_parallel("MetaLearner.aggregate", "train in one process")
    for _, p in params:
        p.grad = None
    reached = reached_parameters(current.tasks, params)
    gradients = task_gradients(current.tasks, params)
    coefficients = weights.tolist()
    rows = [torch._foreach_mul(g, c) for g, c in zip(gradients, coefficients, strict=True)]
    owners = [[t for t, task in enumerate(reached) if task[i]] for i in range(len(params))]
    for i, ((_, p), tasks) in enumerate(zip(params, owners, strict=True)):
        p.grad = rows[tasks[0]][i] if len(tasks) == 1 else None
    shared = [i for i, tasks in enumerate(owners) if len(tasks) > 1]
    if not shared:
        return {}
    shared_rows = [[row[i] for i in shared] for row in rows]
    if not all_finite([g for row in shared_rows for g in row]):
        # The sum is non-finite too: the caller's check skips the update.
        combined, row_weights = combine([1.0] * len(rows), shared_rows), None
    else:
        combined, row_weights = aggregate(shared_rows)
    for i, grad in zip(shared, combined, strict=True):
        params[i][1].grad = grad
    if row_weights is None:
        return {}
    return {f"aggregate/weight/{k}": float(w) for k, w in zip(keys, row_weights, strict=True)}


class InnerUpdate:
    """Steps the weights ``params`` with ``optimizer`` along the inner update's gradient at the
    training step's pass: per-task weights ``dM/dl`` (``normalize_weights``: divided by
    ``mean_t |dM/dl_t|``), combined by ``set_gradient`` or, with ``aggregate``, by
    ``set_aggregated_gradient``. ``check_parameters``: raise ``NonFiniteParametersError`` when
    a parameter became non-finite in the update."""

    def __init__(
        self,
        params: NamedParams,
        optimizer: torch.optim.Optimizer,
        aggregate: Aggregate | None,
        normalize_weights: bool,
        check_parameters: bool,
    ) -> None:
        self.params = params
        self.optimizer = optimizer
        self.aggregate = aggregate
        self.normalize_weights = bool(normalize_weights)
        self.check_parameters = check_parameters

    def __call__(
        self, current: Pass, meta: MetaNetwork, keys: Sequence[str], step: int
    ) -> tuple[dict[str, float], tuple[str, str] | None]:
        """Descend ``M`` at ``current`` in the inner update of call ``step``; the metrics
        (``meta_loss``, ``dM/dl/<task>``, the aggregate's weights), and the skip reason and
        detail when a non-finite ``M``, ``dM/dl`` or gradient stopped the update (the weights,
        their ``.grad`` and the optimizer then untouched)."""
        values = current.values
        dmeta_dl = meta.loss_derivative(values)
        with torch.no_grad():
            meta_value = meta(values.detach())
        metrics = {"meta_loss": float(meta_value)}
        metrics |= {f"dM/dl/{k}": float(g) for k, g in zip(keys, dmeta_dl, strict=True)}
        if not bool(torch.isfinite(meta_value)):
            return metrics, ("nonfinite_meta_loss", f"M = {float(meta_value)}")
        if not bool(torch.isfinite(dmeta_dl).all()):
            return metrics, ("nonfinite_meta_loss", f"dM/dl = {dmeta_dl.tolist()}")
        weights = task_weights(dmeta_dl, self.normalize_weights)
        if self.aggregate is None:
            set_gradient(current, self.params, weights)
        else:
            metrics |= set_aggregated_gradient(current, self.params, weights, self.aggregate, keys)
        bad_grad = first_nonfinite((n, p.grad) for n, p in self.params)
        if bad_grad is not None:
            for _, p in self.params:
                p.grad = None
            return metrics, ("nonfinite_grad", f"gradient of {bad_grad}")
        self.optimizer.step()
        if self.check_parameters:
            check_parameters_finite(self.params, step)
        return metrics, None
