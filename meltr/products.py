"""Jacobian- and Hessian-vector products of the backbone's losses (docs/design.md, section 2).

Every backend offers two products along a tangent ``q`` shaped like the trainable parameters:

- ``loss_jvp(losses, params, q, ...) -> c`` with ``c_t = (dl_t/dw) . q``, shape ``[T]``;
- ``hvp(losses, params, meta, q) -> H q`` with ``H = d^2 meta(l(w)) / dw^2``.

``losses`` is a ``PinnedLosses`` (one batch, RNG replayed per evaluation), ``params`` the list of
``(name, parameter)`` pairs that make up ``w``, ``meta`` maps the ``[T]`` loss vector to a scalar
and must not record a graph to the meta parameters (pass it a detached copy). No backend changes
the parameters' values or ``.grad``; forward passes may update buffers (the caller restores them).
A backend's ``takes_task_gradients`` says whether its ``loss_jvp`` wants the aux batch's per-task
gradients (``gradients=``) rather than its loss values (``values=``).

Backends (``make_products(name)``):

- ``finite_difference``: central differences of no-grad forwards (``loss_jvp``) or of gradients
  (``hvp``) at ``w +- eps q`` (``meltr.finite_differences``: the step rule). Works with any
  kernel, FSDP and checkpointing.
- ``finite_difference_one_sided``: ``loss_jvp`` as ``(l(w + eps q) - l(w)) / eps``, one
  perturbed forward instead of two; ``l(w)`` is the ``values`` the caller already computed (a
  no-grad forward when not given). First-order truncation: less accurate (docs/benchmarks.md).
  HVPs are central.
- ``task_gradients``: ``loss_jvp`` exactly, as ``c_t = g_t . q`` from each task's own gradient
  ``g_t = dl_t/dw`` (one backward per task instead of finite differences; the learner takes
  them from the aux pass it already has and, when that pass is the training step's, the inner
  update reuses them instead of a backward of its own). A backward from one task traverses only
  that task's part of the graph, so the T backwards cost one backward when the tasks' graphs
  are disjoint (All-in-one: ``itc`` from the text and video passes, ``mlm`` from the joint
  pass) and up to T backwards when they share a trunk. Memory: T gradients instead of one.
  Single process only (data-parallel wrappers reduce gradients once per backward, and DDP waits
  for the parameters a task does not use). HVPs are central finite differences.
- ``forward``: ``torch.func.jvp`` over ``torch.func.functional_call`` (exact); the HVP is
  forward-over-reverse. Runs under the math attention kernel.
- ``autograd``: reverse mode only, classic double backward through the backbone for both
  products (exact; the reference implementation's method and cost; for checking).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from meltr.finite_differences import CentralDifferenceHvp, FiniteDifference, MetaFn
from meltr.gradients import NamedParams, backward_gradients
from meltr.objective import PinnedLosses, math_attention
from meltr.ranks import is_data_parallel


def _grads(output: torch.Tensor, params: NamedParams, **kwargs) -> list[torch.Tensor]:
    """``d output / d params``, zeros for parameters the output does not depend on."""
    tensors = [p for _, p in params]
    if not output.requires_grad:
        return [torch.zeros_like(p) for p in tensors]
    grads = torch.autograd.grad(output, tensors, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(tensors, grads, strict=True)]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def refuse_data_parallel(what: str, instead: str = "use products='finite_difference'") -> None:
    """RuntimeError naming ``what`` (and what to use ``instead``) when a process group of
    several ranks is running."""
    if is_data_parallel():
        raise RuntimeError(
            f"{what} runs one backward per task and is single-process only (data-parallel "
            "wrappers reduce gradients once per backward; DDP waits for the parameters a task "
            f"does not use): {instead}"
        )


class TaskGradients(CentralDifferenceHvp):
    """Exact JVPs from the tasks' own gradients, central finite-difference HVPs; see the module
    docstring."""

    name = "task_gradients"
    takes_task_gradients = True

    def loss_jvp(
        self,
        losses: PinnedLosses,
        params: NamedParams,
        tangent: Sequence[torch.Tensor],
        values: torch.Tensor | None = None,
        gradients: Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """``c_t = g_t . q``; ``gradients``: the ``g_t`` when the caller has them (otherwise a
        forward with graph and one backward per task, each through the whole graph)."""
        refuse_data_parallel(f"products={self.name!r}")
        if gradients is None:
            with torch.enable_grad():
                stacked = losses()
            eye = torch.eye(len(stacked), dtype=stacked.dtype, device=stacked.device)
            gradients = [
                backward_gradients([stacked], [row], params, retain_graph=True) for row in eye
            ]
        return torch.stack(
            [
                sum(
                    torch.dot(g.reshape(-1), t.reshape(-1))
                    for g, t in zip(grads, tangent, strict=True)
                )
                for grads in gradients
            ]
        )


def _functional_point(
    params: NamedParams, tangent: Sequence[torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(primals, tangents)``: the detached weights and the tangent by parameter name, as
    ``torch.func.jvp`` over ``PinnedLosses.at`` takes them."""
    primals = {name: p.detach() for name, p in params}
    tangents = {name: t for (name, _), t in zip(params, tangent, strict=True)}
    return primals, tangents


class Forward:
    """Exact forward-mode products through ``torch.func`` under the math attention kernel."""

    name = "forward"
    takes_task_gradients = False

    def loss_jvp(
        self,
        losses: PinnedLosses,
        params: NamedParams,
        tangent: Sequence[torch.Tensor],
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        primals, tangents = _functional_point(params, tangent)
        with math_attention(), torch.no_grad():
            _, c = torch.func.jvp(losses.at, (primals,), (tangents,))
        return c

    def hvp(
        self,
        losses: PinnedLosses,
        params: NamedParams,
        meta: MetaFn,
        tangent: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        primals, tangents = _functional_point(params, tangent)
        gradient = torch.func.grad(lambda w: meta(losses.at(w)))
        # torch.func.grad ignores the outer no_grad, which only stops a graph to the caller.
        with math_attention(), torch.no_grad():
            _, hq = torch.func.jvp(gradient, (primals,), (tangents,))
        return [hq[name] for name, _ in params]


class Autograd:
    """Exact reverse-mode products (double backward for both) under the math kernel."""

    name = "autograd"
    takes_task_gradients = False

    def loss_jvp(
        self,
        losses: PinnedLosses,
        params: NamedParams,
        tangent: Sequence[torch.Tensor],
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # c = J q through the double-backward trick: g(u) = J^T u with a graph, then d(g(u).q)/du.
        # Differentiating the backbone's backward pass is what the reference implementation pays.
        with math_attention(), torch.enable_grad():
            values = losses()
            probe = torch.zeros_like(values, requires_grad=True)
            pullback = _grads(values, params, grad_outputs=probe, create_graph=True)
            (c,) = torch.autograd.grad(
                _dot(pullback, tangent), probe, allow_unused=True, materialize_grads=True
            )
        return c.detach()

    def hvp(
        self,
        losses: PinnedLosses,
        params: NamedParams,
        meta: MetaFn,
        tangent: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        with math_attention(), torch.enable_grad():
            gradient = _grads(meta(losses()), params, create_graph=True)
            return [g.detach() for g in _grads(_dot(gradient, tangent), params)]


PRODUCTS = {
    "finite_difference": FiniteDifference,
    "finite_difference_one_sided": lambda: FiniteDifference(one_sided=True),
    "task_gradients": TaskGradients,
    "forward": Forward,
    "autograd": Autograd,
}

Products = FiniteDifference | TaskGradients | Forward | Autograd


def make_products(name: str) -> Products:
    """The products backend called ``name``; ValueError listing the valid names otherwise."""
    if name not in PRODUCTS:
        raise ValueError(f"unknown products {name!r}; expected one of {sorted(PRODUCTS)}")
    return PRODUCTS[name]()
