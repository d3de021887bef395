"""The one module of the benchmarks that reaches into ``meltr``'s private parts: the learner's
pinned forward and frozen meta network (the inner Hessian's products, for
``tools/hessian_spectrum.py``) and the functions a hypergradient's phases are timed by (``tools/
bench_scale.py --profile``). A refactoring of ``meltr/learner.py``, ``meltr/hypergradients.py`` or
``meltr/finite_differences.py`` updates this file alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

import meltr.finite_differences
import meltr.hypergradients
import meltr.learner
import meltr.objective

Vectors = list[torch.Tensor]

# (owner, attribute, label): the functions that make up a hypergradient's phases.
PROFILED_PHASES = [
    (meltr.learner.MetaLearner, "_forward", "forward with graph (loss source)"),
    (meltr.hypergradients, "backward_gradients", "backward for v"),
    (meltr.hypergradients, "task_gradients", "per-task backwards (v, c)"),
    (meltr.finite_differences, "finite_difference_step", "step rule (|w|.|q|, ||q||^2)"),
    (meltr.objective.PinnedLosses, "__call__", "perturbed no-grad forwards"),
    (meltr.finite_differences, "perturbed_evaluations", "perturbed evaluations (with forwards)"),
]


def inner_hessian_product(
    learner: meltr.MetaLearner, batch: Any
) -> tuple[Callable[[Vectors], Vectors], Vectors]:
    """``(hvp, like)``: ``hvp(x)`` is ``H x`` for the inner Hessian ``H = d^2 M(l(w; batch);
    phi) / dw^2`` at the learner's current weights, by the learner's own products (the code path
    of its solvers) at one pinned forward of ``batch``; ``x`` and the result are CPU tensors
    shaped like ``like`` (the trainable parameters). Changes no state."""
    meta, params = learner.meta_network.frozen(), learner.params
    losses = learner._forward(batch).losses

    def hvp(x: Vectors) -> Vectors:
        moved = [v.to(p.device) for v, (_, p) in zip(x, params, strict=True)]
        return [h.cpu() for h in learner.products.hvp(losses, params, meta, moved)]

    return hvp, [p.detach().cpu() for _, p in params]
