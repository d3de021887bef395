"""Jacobian- and Hessian-vector products of the backbone's losses (DESIGN.md section 2).

Every backend offers two products along a tangent ``q`` shaped like the trainable parameters:

- ``loss_jvp(losses, params, q) -> c`` with ``c_t = (dl_t/dw) . q``, shape ``[T]``;
- ``hvp(losses, params, meta, q) -> H q`` with ``H = d^2 meta(l(w)) / dw^2``.

``losses`` is a ``PinnedLosses`` (one batch, RNG replayed per evaluation), ``params`` the list of
``(name, parameter)`` pairs that make up ``w``, ``meta`` maps the ``[T]`` loss vector to a scalar
and must not record a graph to the meta parameters (pass it a detached copy). No backend changes
the parameters' values or ``.grad``; forward passes may update buffers (the caller restores them).

Backends:

- ``finite_difference``: central differences of no-grad forwards (``loss_jvp``) or of gradients
  (``hvp``) at ``w +- eps q``. Works with any kernel, FSDP and checkpointing. Step rule:
  ``eps = sqrt(machine_eps(dtype)) / 2 * <|w|, |q|> / ||q||^2``, i.e. the perturbation changes
  each weight by about ``sqrt(machine_eps) / 2`` of its own size, on average over the
  coordinates ``q`` moves (``1.7e-4`` in float32). Scaling by ``||w||`` instead is wrong for
  networks whose weight norm sits in coordinates ``q`` barely touches (token embeddings): the step
  then grows large against the weights that matter and truncation error dominates. The constant
  was measured on the transformer of ``tools/bench_hypergrad.py`` in float32 (relative error
  against the ``forward`` products: 3e-5 for both ``loss_jvp`` and ``hvp``; the previous rule,
  ``cbrt(machine_eps) * (1 + ||w||) / ||q||``, gave 9e-2 and 9e-1). Rounding bounds it from
  below: on quadratic losses, where central differences are otherwise exact, float32 gives about
  6e-4. When ``w`` is zero wherever ``q`` is not, the perturbation's
  norm is that same fraction instead.
  The parameters are restored bit-exactly from one saved copy.
- ``forward``: ``torch.func.jvp`` over ``torch.func.functional_call`` (exact); the HVP is
  forward-over-reverse. Runs under the math attention kernel.
- ``autograd``: reverse mode only, classic double backward through the backbone for both
  products (exact; the reference implementation's method and cost; for checking).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from meltr.objective import PinnedLosses, math_attention

NamedParams = Sequence[tuple[str, nn.Parameter]]
MetaFn = Callable[[torch.Tensor], torch.Tensor]


def _grads(output: torch.Tensor, params: NamedParams, **kwargs) -> list[torch.Tensor]:
    """``d output / d params``, zeros for parameters the output does not depend on."""
    tensors = [p for _, p in params]
    if not output.requires_grad:
        return [torch.zeros_like(p) for p in tensors]
    grads = torch.autograd.grad(output, tensors, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(tensors, grads, strict=True)]


def backward_gradients(
    outputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    params: NamedParams,
    retain_graph: bool = False,
) -> list[torch.Tensor]:
    """``d (sum_i grad_outputs[i] . outputs[i]) / d params`` computed with ``backward()``, zeros
    for parameters the outputs do not depend on.

    Unlike ``torch.autograd.grad`` this runs the hooks that data-parallel wrappers put on
    parameters, so under DDP / FSDP2 the result is already averaged over ranks (and, under FSDP2,
    a sharded ``DTensor`` like its parameter). Each parameter's ``.grad`` is left as it was.
    """
    tensors = [p for _, p in params]
    kept = [p.grad for p in tensors]
    for p in tensors:
        p.grad = None
    try:
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
        if pairs:
            torch.autograd.backward(
                [o for o, _ in pairs], [g for _, g in pairs], retain_graph=retain_graph
            )
        return [torch.zeros_like(p) if p.grad is None else p.grad for p in tensors]
    finally:
        for p, grad in zip(tensors, kept, strict=True):
            p.grad = grad


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def _global_float(value: torch.Tensor) -> float:
    """A scalar as a float; a DTensor (FSDP2 shards) is reduced over its mesh first."""
    full_tensor = getattr(value, "full_tensor", None)
    return float(full_tensor() if full_tensor is not None else value)


def finite_difference_step(params: NamedParams, tangent: Sequence[torch.Tensor]) -> float:
    """The central-difference step ``eps`` for perturbing ``params`` along ``tangent``
    (0.0 when the tangent is zero). See the module docstring for the rule."""
    tangent_sq = _global_float(torch.stack([t.pow(2).sum() for t in tangent]).sum())
    if tangent_sq == 0.0:
        return 0.0
    overlap = _global_float(
        torch.stack(
            [(p.detach().abs() * t.abs()).sum() for (_, p), t in zip(params, tangent, strict=True)]
        ).sum()
    )
    relative = torch.finfo(params[0][1].dtype).eps ** 0.5 / 2.0
    scale = overlap / tangent_sq if overlap > 0.0 else tangent_sq**-0.5
    return relative * scale


class FiniteDifference:
    """Central differences with the same RNG state on both sides; see the module docstring."""

    name = "finite_difference"

    @staticmethod
    @torch.no_grad()
    def _central(params: NamedParams, tangent: Sequence[torch.Tensor], eps: float, evaluate):
        """``(evaluate() at w + eps q) - (evaluate() at w - eps q)) / (2 eps)`` for a tensor or a
        list of tensors; w is restored bit-exactly from one saved copy."""
        # Perturb through ``.data`` so the parameters' autograd version counters stay put: graphs
        # recorded before this call (e.g. the training step's forward) remain usable, which is
        # sound because the values are restored bit-exactly before those graphs are used.
        tensors = [p.data for _, p in params]
        saved = [p.clone() for p in tensors]
        try:
            results = []
            for sign in (1.0, -1.0):
                for p, t in zip(tensors, tangent, strict=True):
                    p.add_(t, alpha=sign * eps)
                results.append(evaluate())
                for p, s in zip(tensors, saved, strict=True):
                    p.copy_(s)
        finally:
            for p, s in zip(tensors, saved, strict=True):
                p.copy_(s)
        plus, minus = results
        if isinstance(plus, torch.Tensor):
            return (plus - minus) / (2.0 * eps)
        return [(a - b) / (2.0 * eps) for a, b in zip(plus, minus, strict=True)]

    def loss_jvp(
        self, losses: PinnedLosses, params: NamedParams, tangent: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        eps = finite_difference_step(params, tangent)
        if eps == 0.0:
            return torch.zeros(len(losses.keys), dtype=params[0][1].dtype)
        return self._central(params, tangent, eps, losses)

    def hvp(
        self,
        losses: PinnedLosses,
        params: NamedParams,
        meta: MetaFn,
        tangent: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        eps = finite_difference_step(params, tangent)
        if eps == 0.0:
            return [torch.zeros_like(p) for _, p in params]

        def gradient() -> list[torch.Tensor]:
            with torch.enable_grad():
                objective = meta(losses())
                return backward_gradients([objective], [torch.ones_like(objective)], params)

        return self._central(params, tangent, eps, gradient)


class Forward:
    """Exact forward-mode products through ``torch.func`` under the math attention kernel."""

    name = "forward"

    def loss_jvp(
        self, losses: PinnedLosses, params: NamedParams, tangent: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        primals = {name: p.detach() for name, p in params}
        tangents = {name: t for (name, _), t in zip(params, tangent, strict=True)}
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
        primals = {name: p.detach() for name, p in params}
        tangents = {name: t for (name, _), t in zip(params, tangent, strict=True)}
        gradient = torch.func.grad(lambda w: meta(losses.at(w)))
        # torch.func.grad ignores the outer no_grad, which only stops a graph to the caller.
        with math_attention(), torch.no_grad():
            _, hq = torch.func.jvp(gradient, (primals,), (tangents,))
        return [hq[name] for name, _ in params]


class Autograd:
    """Exact reverse-mode products (double backward for both) under the math kernel."""

    name = "autograd"

    def loss_jvp(
        self, losses: PinnedLosses, params: NamedParams, tangent: Sequence[torch.Tensor]
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


PRODUCTS = {cls.name: cls for cls in (FiniteDifference, Forward, Autograd)}


def make_products(name: str) -> FiniteDifference | Forward | Autograd:
    """The products backend called ``name``; ValueError listing the valid names otherwise."""
    if name not in PRODUCTS:
        raise ValueError(f"unknown products {name!r}; expected one of {sorted(PRODUCTS)}")
    return PRODUCTS[name]()
