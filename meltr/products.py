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
  ``eps = factor * sqrt(machine_eps(dtype)) * <|w|, |q|> / ||q||^2``, i.e. the perturbation
  changes each weight by about ``factor * sqrt(machine_eps)`` of its own size, on average over
  the coordinates ``q`` moves. Scaling by ``||w||`` instead is wrong for networks whose weight
  norm sits in coordinates ``q`` barely touches (token embeddings): the step then grows large
  against the weights that matter and truncation error dominates. When ``w`` is zero wherever
  ``q`` is not, the perturbation's norm is that same fraction instead. The fraction
  (``relative_step``): for ``loss_jvp`` ``CENTRAL_JVP_STEP * cbrt(machine_eps)`` (2.2e-5 in
  float32, 2.7e-8 in float64), measured with ``tools/bench_scale.py --accuracy``: the
  hypergradient's relative error against ``forward`` products in float32 stays below 1e-3 on
  the small benchmark transformer, the BERT-base-sized one and All-in-one ViT-B/16, where the
  earlier 1.7e-4 left 1.1e-2 on All-in-one (truncation) and 2.7e-6 left 5e-3 on the small
  transformer (rounding); for ``hvp`` ``sqrt(machine_eps) / 2`` (1.7e-4 in float32;
  ``tools/bench_hypergrad.py``: about 2e-5 against autograd products). Rounding bounds the
  error from below where few weights average it out: about 5e-3 on a 6-weight quadratic in
  float32. Under autocast the weights' bf16 copies quantise the perturbation: ``loss_jvp``
  takes 1.7e-4 there (errors of 2e-4 to 1e-2 against bf16 ``forward`` products, which
  themselves differ from float32 ones by 2e-3 to 6e-3).
- ``finite_difference_one_sided``: ``loss_jvp`` as ``(l(w + eps q) - l(w)) / eps``, one
  perturbed forward instead of two; ``l(w)`` is the ``values`` the caller already computed
  (the learner's forward with graph; a no-grad forward when not given). Step
  ``sqrt(machine_eps) / 32`` (4.3e-5 under autocast). First-order truncation: errors of 1e-4
  to 1e-2 in float32 on the benchmark models and above 1e-2 under bf16 autocast
  (``tools/bench_scale.py --accuracy``). HVPs are central.
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

Finite-difference products restore the parameters bit-exactly from one saved copy (on CUDA in
pinned host memory, so it takes no accelerator memory; under FSDP2 the local shard). Autocast
caches the low-precision copy of each weight within an autocast region; the products clear that
cache after every perturbation, or the perturbed forwards would reuse the unperturbed copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from meltr.objective import PinnedLosses, math_attention

NamedParams = Sequence[tuple[str, nn.Parameter]]
MetaFn = Callable[[torch.Tensor], torch.Tensor]

# Perturbation size as a fraction of the weights' own size (module docstring), per scheme.
# Central differences balance O(eps^2) truncation against O(u / eps) rounding (u the machine
# epsilon of the weights' dtype), so their step scales as cbrt(u); one-sided differences
# (O(eps) truncation) as sqrt(u). Under autocast the weights' bf16/fp16 copies quantise small
# perturbations: JVPs there take fixed, larger fractions.
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


class FiniteDifference:
    """Finite differences of no-grad forwards with the same RNG state on every side; see the
    module docstring. ``one_sided``: ``loss_jvp`` takes ``(l(w + eps q) - l(w)) / eps`` from
    one perturbed forward and the loss values at w the caller already has (``values``);
    central ``(l(w + eps q) - l(w - eps q)) / (2 eps)`` otherwise. HVPs are always central."""

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
        if not self.one_sided:
            eps = finite_difference_step(params, tangent, relative_step("central", params))
            if eps == 0.0:
                return torch.zeros(len(losses.keys), dtype=params[0][1].dtype)
            plus, minus = perturbed_evaluations(params, tangent, (eps, -eps), losses)
            return _difference(plus, minus, 2.0 * eps)
        eps = finite_difference_step(params, tangent, relative_step("one_sided", params))
        if eps == 0.0:
            return torch.zeros(len(losses.keys), dtype=params[0][1].dtype)
        if values is None:
            with torch.no_grad():
                values = losses()
        (plus,) = perturbed_evaluations(params, tangent, (eps,), losses)
        return _difference(plus, values.detach(), eps)

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


def _graph(output: torch.Tensor) -> tuple[set, set[int]]:
    """The autograd nodes a backward from ``output`` runs, parameters' ``AccumulateGrad``
    nodes left out, and the ids of the leaf tensors it reaches (through those nodes)."""
    seen: set = set()
    leaves: set[int] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if hasattr(node, "variable"):  # a leaf's accumulator
            leaves.add(id(node.variable))
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return seen, leaves


def reached_parameters(tasks: Sequence[torch.Tensor], params: NamedParams) -> list[list[bool]]:
    """``[[does a backward from tasks[t] reach params[i] for i] for t]``, from the graphs'
    structure (a reached parameter whose gradient happens to be zero counts as reached)."""
    leaves = [_graph(task)[1] for task in tasks]
    return [[id(p) in reached for _, p in params] for reached in leaves]


def task_gradients(
    tasks: Sequence[torch.Tensor], params: NamedParams, retain_graph: bool = False
) -> list[list[torch.Tensor]]:
    """``[d tasks[t] / d params for t]``, one ``backward`` from each scalar (see
    ``backward_gradients``). A task's graph is kept for the later tasks only where they share
    nodes (or with ``retain_graph``), so disjoint graphs are freed task by task."""
    nodes = [_graph(task)[0] for task in tasks]
    gradients = []
    for index, task in enumerate(tasks):
        later = set().union(*nodes[index + 1 :])
        retain = retain_graph or not nodes[index].isdisjoint(later)
        gradients.append(
            backward_gradients([task], [torch.ones_like(task)], params, retain_graph=retain)
        )
    return gradients


def combine(
    coefficients: Sequence[float], gradients: Sequence[Sequence[torch.Tensor]]
) -> list[torch.Tensor]:
    """``sum_t coefficients[t] * gradients[t]`` (new tensors)."""
    total = torch._foreach_mul(list(gradients[0]), float(coefficients[0]))
    for coefficient, gradient in zip(coefficients[1:], gradients[1:], strict=True):
        torch._foreach_add_(total, list(gradient), alpha=float(coefficient))
    return total


def refuse_data_parallel(what: str, instead: str = "use products='finite_difference'") -> None:
    """RuntimeError naming ``what`` (and what to use ``instead``) when a process group of
    several ranks is running."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        raise RuntimeError(
            f"{what} runs one backward per task and is single-process only (data-parallel "
            "wrappers reduce gradients once per backward; DDP waits for the parameters a task "
            f"does not use): {instead}"
        )


class TaskGradients:
    """Exact JVPs from the tasks' own gradients, central finite-difference HVPs; see the module
    docstring."""

    name = "task_gradients"

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

    def hvp(
        self,
        losses: PinnedLosses,
        params: NamedParams,
        meta: MetaFn,
        tangent: Sequence[torch.Tensor],
    ) -> list[torch.Tensor]:
        return FiniteDifference().hvp(losses, params, meta, tangent)


class Forward:
    """Exact forward-mode products through ``torch.func`` under the math attention kernel."""

    name = "forward"

    def loss_jvp(
        self,
        losses: PinnedLosses,
        params: NamedParams,
        tangent: Sequence[torch.Tensor],
        values: torch.Tensor | None = None,
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
