"""Finite-difference products: the step rule, perturbed evaluations, the ``finite_difference``
backends (see ``meltr.products`` for the products' contract).

Step rule: ``eps = relative * <|w|, |q|> / ||q||^2``: the perturbation changes each weight by
about ``relative`` of its own size, on average over the coordinates ``q`` moves (scaling by
``||w||`` instead lets the weight norm of coordinates ``q`` barely touches, such as token
embeddings, inflate the step until truncation error dominates). When ``w`` is zero wherever ``q``
is not, the perturbation's norm is that same fraction instead. ``relative`` (``relative_step``)
balances truncation against rounding in the weights' dtype: central differences' error is
``O(eps^2) + O(u / eps)`` (``u`` the machine epsilon), so their step scales as ``cbrt(u)``;
one-sided differences' ``O(eps) + O(u / eps)``, so ``sqrt(u)``. Under autocast the weights' bf16
copies quantise small perturbations, and the JVP steps are fixed, larger fractions. The constants
and the errors they give on the benchmark models are in docs/benchmarks.md
(``tools/bench_scale.py --accuracy``, ``tools/bench_hypergrad.py``).

The parameters are restored bit-exactly from one saved copy (on CUDA in pinned host memory, so it
takes no accelerator memory; under FSDP2 the local shard). Autocast caches the low-precision copy
of each weight within an autocast region; the cache is cleared after every perturbation, or the
perturbed forwards would reuse the unperturbed copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from meltr.gradients import NamedParams, backward_gradients
from meltr.objective import PinnedLosses

MetaFn = Callable[[torch.Tensor], torch.Tensor]

# The perturbation's size relative to the weights, per scheme (module docstring).
CENTRAL_JVP_STEP = 4.4e-3  # x cbrt(u): 2.2e-5 in float32, 2.7e-8 in float64
ONE_SIDED_JVP_STEP = 1 / 32  # x sqrt(u): 1.1e-5 in float32
AUTOCAST_CENTRAL_JVP_STEP = 1.7e-4
AUTOCAST_ONE_SIDED_JVP_STEP = 4.3e-5
HVP_STEP = 1 / 2  # x sqrt(u): 1.7e-4 in float32 (central differences of gradients)


def relative_step(scheme: str, params: NamedParams) -> float:
    """The perturbation's size relative to the weights for ``scheme`` (``"central"``,
    ``"one_sided"`` or ``"hvp"``), given the weights' dtype and whether autocast is on."""
    u = torch.finfo(params[0][1].dtype).eps
    autocast = torch.is_autocast_enabled(params[0][1].device.type)
    if scheme == "central":
        return AUTOCAST_CENTRAL_JVP_STEP if autocast else CENTRAL_JVP_STEP * u ** (1 / 3)
    if scheme == "one_sided":
        return AUTOCAST_ONE_SIDED_JVP_STEP if autocast else ONE_SIDED_JVP_STEP * u**0.5
    if scheme == "hvp":
        return HVP_STEP * u**0.5
    raise ValueError(f"unknown finite-difference scheme {scheme!r}")


def _is_sharded(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "full_tensor")


def _global_sum(terms: Sequence[torch.Tensor]) -> float:
    """The sum of scalar tensors as a float; sharded ones (DTensor partial sums of FSDP2 shards)
    are reduced over their mesh first. One host synchronisation per kind."""
    plain = [t for t in terms if not _is_sharded(t)]
    sharded = [t for t in terms if _is_sharded(t)]
    total = float(torch.stack(plain).sum()) if plain else 0.0
    if sharded:
        total += float(torch.stack(sharded).sum().full_tensor())
    return total


_CHUNK = 1 << 18  # elements per slice of the step rule's scratch buffer (1 MiB in float32)


def _accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def _abs_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum(|a| * |b|)`` as a scalar of at least float32, through a small scratch buffer
    rather than tensor-sized temporaries (on CPU those cost more than the arithmetic). Sharded
    tensors (DTensor) give a partial sum over their mesh."""
    dtype = torch.promote_types(_accumulation_dtype(a), b.dtype)
    if _is_sharded(a):
        return (a.abs() * b.abs()).sum().to(dtype)
    a, b = a.reshape(-1), b.reshape(-1)
    scratch_dtype = torch.promote_types(a.dtype, b.dtype)
    scratch = torch.empty(min(a.numel(), _CHUNK), dtype=scratch_dtype, device=a.device)
    total = torch.zeros((), dtype=dtype, device=a.device)
    for start in range(0, a.numel(), _CHUNK):
        part = scratch[: min(_CHUNK, a.numel() - start)]
        torch.mul(a[start : start + part.numel()], b[start : start + part.numel()], out=part)
        total += part.abs_().sum(dtype=dtype)
    return total


def _squared_norm(t: torch.Tensor) -> torch.Tensor:
    """``sum(t^2)`` as a scalar of at least float32 (a DTensor: a partial sum)."""
    dtype = _accumulation_dtype(t)
    if _is_sharded(t):
        return t.to(dtype).pow(2).sum()
    return torch.linalg.vector_norm(t, dtype=dtype).pow(2)


def finite_difference_step(
    params: NamedParams, tangent: Sequence[torch.Tensor], relative: float
) -> float:
    """The finite-difference step ``eps`` for perturbing ``params`` along ``tangent``
    (0.0 when the tangent is zero): the perturbation moves each weight by about ``relative``
    of its own size (see ``relative_step`` and the module docstring)."""
    tangent_sq = _global_sum([_squared_norm(t) for t in tangent])
    if tangent_sq == 0.0:
        return 0.0
    overlap = _global_sum(
        [_abs_dot(p.detach(), t) for (_, p), t in zip(params, tangent, strict=True)]
    )
    scale = overlap / tangent_sq if overlap > 0.0 else tangent_sq**-0.5
    return relative * scale


def _saved_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of ``tensor`` to restore it from: in pinned host memory for a CUDA tensor (the
    copy then costs no accelerator memory), a clone otherwise (a DTensor clones its local
    shard only)."""
    if tensor.device.type == "cuda" and not _is_sharded(tensor):
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)
    return tensor.clone()


@torch.no_grad()
def perturbed_evaluations(
    params: NamedParams,
    tangent: Sequence[torch.Tensor],
    steps: Sequence[float],
    evaluate: Callable[[], object],
) -> list:
    """``[evaluate() at w + s * q for s in steps]``, w restored bit-exactly afterwards (also
    when ``evaluate`` raises) from one saved copy.

    The weights are perturbed through ``.data`` so their autograd version counters stay put:
    graphs recorded before this call (the training step's forward) remain usable, which is
    sound because the values are restored bit-exactly before those graphs are used. Autocast
    caches the low-precision copy of each weight within an autocast region; the cache is
    cleared after every change of the weights, or the perturbed evaluations would see the
    unperturbed copies.
    """
    tensors = [p.data for _, p in params]
    saved = [_saved_copy(t) for t in tensors]

    def restore() -> None:
        for t, s in zip(tensors, saved, strict=True):
            t.copy_(s, non_blocking=True)
        torch.clear_autocast_cache()

    results = []
    perturbed = False
    try:
        for step in steps:
            perturbed = True
            for t, d in zip(tensors, tangent, strict=True):
                t.add_(d, alpha=step)
            torch.clear_autocast_cache()
            results.append(evaluate())
            restore()
            perturbed = False
    finally:
        if perturbed:
            restore()
    return results


def _difference(plus, minus, eps: float):
    if isinstance(plus, torch.Tensor):
        return (plus - minus) / eps
    return [(a - b) / eps for a, b in zip(plus, minus, strict=True)]


class CentralDifferenceHvp:
    """Central finite-difference HVPs: ``(g(w + eps q) - g(w - eps q)) / (2 eps)`` with ``g`` the
    gradient of ``meta(losses())`` (the step rule's ``"hvp"`` scheme); shared by the backends
    whose Hessian products are finite differences."""

    def hvp(
        self,
        losses: PinnedLosses,
        params: NamedParams,
        meta: MetaFn,
        tangent: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        eps = finite_difference_step(params, tangent, relative_step("hvp", params))
        if eps == 0.0:
            return [torch.zeros_like(p) for _, p in params]

        def gradient() -> list[torch.Tensor]:
            with torch.enable_grad():
                objective = meta(losses())
                return backward_gradients([objective], [torch.ones_like(objective)], params)

        plus, minus = perturbed_evaluations(params, tangent, (eps, -eps), gradient)
        return _difference(plus, minus, 2.0 * eps)


class FiniteDifference(CentralDifferenceHvp):
    """Finite differences of no-grad forwards with the same RNG state on every side; see the
    module docstring. ``one_sided``: ``loss_jvp`` takes ``(l(w + eps q) - l(w)) / eps`` from
    one perturbed forward and the loss values at w the caller already has (``values``);
    central ``(l(w + eps q) - l(w - eps q)) / (2 eps)`` otherwise. HVPs are always central."""

    takes_task_gradients = False

    def __init__(self, one_sided: bool = False) -> None:
        self.one_sided = one_sided
        self.name = "finite_difference_one_sided" if one_sided else "finite_difference"

    def loss_jvp(
        self,
        losses: PinnedLosses,
        params: NamedParams,
        tangent: Sequence[torch.Tensor],
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``c = J q``; ``values``: ``losses()`` at the current w (the caller's forward with
        graph gives the same numbers), used by the one-sided scheme instead of a forward."""
        scheme = "one_sided" if self.one_sided else "central"
        eps = finite_difference_step(params, tangent, relative_step(scheme, params))
        if eps == 0.0:
            return torch.zeros(len(losses.keys), dtype=params[0][1].dtype)
        if not self.one_sided:
            plus, minus = perturbed_evaluations(params, tangent, (eps, -eps), losses)
            return _difference(plus, minus, 2.0 * eps)
        if values is None:
            with torch.no_grad():
                values = losses()
        (plus,) = perturbed_evaluations(params, tangent, (eps,), losses)
        return _difference(plus, values.detach(), eps)
