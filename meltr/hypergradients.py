"""Hypergradients ``dL_pri/dphi`` on one pair of evaluated batches (docs/design.md, section 1).

Notation: w the model's trainable parameters, phi the meta loss's parameters, ``l(w; B)`` the
``[T]`` task-loss vector of batch B (primary task first) and ``M(l; phi)`` the meta loss. The
meta update descends ``L_pri = l_0(w; B_pri) + gamma * |M(l(w; B_aux)) - sum_t l_t(w; B_aux)|``
in phi, with the implicit hypergradient

    dL_pri/dphi = direct - d/dphi sum_t c_t * dM/dl_t(l(w; B_aux); phi),   c_t = (dl_t/dw) . q,

where ``q ~= H^{-1} v``, ``v = dL_pri/dw``, ``H = d^2 M(l(w; B_aux)) / dw^2`` (from the solver)
and ``direct = gamma * sign(M - sum l) * dM/dphi`` (``direct_grad=True``; the reference
implementation drops it). Only the tiny meta network is differentiated twice.

A solver computes the hypergradient of a ``MetaProblem`` (``solver.hypergradient(problem)``): the
implicit solvers through ``implicit_hypergradient`` with their ``solve``, ``Unrolled`` through
``unrolled_hypergradient`` with its differentiable inner updates. ``FidelityProbe`` compares one
hypergradient with a reference one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from meltr.arguments import require_int
from meltr.gradients import NamedParams, backward_gradients, combine, task_gradients
from meltr.meta_network import MetaNetwork
from meltr.objective import Pass, PinnedLosses, math_attention
from meltr.products import Products, refuse_data_parallel

Reduce = Callable[[torch.Tensor], torch.Tensor]
Vector = list[torch.Tensor]
HVP = Callable[[Vector], Vector]
HVPSampler = Callable[[], HVP]
Solve = Callable[[HVP, Vector, HVPSampler], Vector]
InnerWeights = Callable[
    [dict[str, torch.Tensor], Callable[[dict[str, torch.Tensor]], torch.Tensor]],
    dict[str, torch.Tensor],
]


@dataclass
class Hypergradient:
    """``grads``: ``dL_pri/dphi`` aligned with the meta loss's parameters (what the meta
    optimizer receives as ``.grad``); ``l_pri``: the value of ``L_pri``."""

    grads: list[torch.Tensor]
    l_pri: float


@dataclass
class MetaProblem:
    """``L_pri`` on one pair of evaluated batches, with what a solver needs to differentiate it.

    ``aux`` is ``primary`` itself when B_aux is B_pri. ``params``: the ``(name, parameter)``
    pairs of w; ``products``: the backend of the products with the backbone's losses;
    ``reduce``: applied to ``c`` and to each of phi's gradients (the seam for distributed
    training); ``draw_batch``: a batch drawn for a sampled Hessian (``StocBIO``), one draw per
    call. Computing a hypergradient changes no parameter or ``.grad``; forwards may advance the
    global RNG and update the model's buffers (the caller restores them).
    """

    primary: Pass
    aux: Pass
    params: NamedParams
    meta: MetaNetwork
    products: Products
    gamma: float
    direct_grad: bool
    reduce: Reduce
    draw_batch: Callable[[], Any]


def implicit_hypergradient(problem: MetaProblem, solve: Solve) -> Hypergradient:
    """The implicit hypergradient with ``q = solve(hvp, v, sample_hvp)``: ``hvp`` the products
    with the Hessian on the aux batch, ``sample_hvp()`` those on a freshly drawn batch.

    With a backend that ``takes_task_gradients``, v and c come from the aux pass's per-task
    gradients (kept on the pass as ``task_gradients``); otherwise v is one backward. A backward
    through a pass whose ``graph_needed`` keeps its graph; the others' graphs are freed before
    the products.
    """
    primary, aux, meta = problem.primary, problem.aux, problem.meta
    meta_aux, dmeta_dl = meta.value_and_derivative(aux.values, create_graph=True)
    residual = meta_aux - aux.values.detach().to(meta.dtype).sum()
    sign = residual.detach().sign()
    l_pri = float(primary.values[0].detach()) + problem.gamma * float(residual.detach().abs())
    # v = dL_pri/dw
    #   = grad l_0(B_pri) + gamma sign(M - sum l) sum_t (dM/dl_t - 1) grad l_t(B_aux)
    aux_coeff = (problem.gamma * sign * (dmeta_dl.detach() - 1.0)).to(aux.values.dtype)
    if problem.products.takes_task_gradients:
        v = _v_from_task_gradients(problem, aux_coeff)
        known = {"gradients": aux.task_gradients}
    else:
        v = _v_by_backward(problem, aux_coeff)
        known = {"values": aux.values.detach()}
    hvp, sample_hvp = _hessian_products(problem)
    q = solve(hvp, v, sample_hvp)
    jvp = problem.products.loss_jvp(aux.losses, problem.params, q, **known)
    return Hypergradient(_phi_hypergradient(problem, jvp, dmeta_dl, residual), l_pri)


def _v_by_backward(problem: MetaProblem, aux_coeff: torch.Tensor) -> Vector:
    """``v = dL_pri/dw`` from one backward (from ``l_0`` alone on B_pri when B_aux differs)."""
    primary, aux = problem.primary, problem.aux
    keep_graph = primary.graph_needed or aux.graph_needed
    if aux is primary:
        primary_coeff = torch.zeros_like(primary.values)
        primary_coeff[0] = 1.0
        outputs, coeffs = [primary.values], [primary_coeff + aux_coeff]
    else:
        # Only l_0 of B_pri enters L_pri: backward from it alone.
        outputs = [primary.tasks[0]] + ([aux.values] if problem.gamma != 0.0 else [])
        coeffs = [torch.ones_like(primary.tasks[0])] + [aux_coeff][: len(outputs) - 1]
    return list(backward_gradients(outputs, coeffs, problem.params, retain_graph=keep_graph))


def _v_from_task_gradients(problem: MetaProblem, aux_coeff: torch.Tensor) -> Vector:
    """``v`` from the aux pass's per-task gradients, taken here and kept on the pass."""
    refuse_data_parallel(f"products={problem.products.name!r}")
    primary, aux, params = problem.primary, problem.aux, problem.params
    aux.task_gradients = task_gradients(aux.tasks, params)
    coefficients = aux_coeff.tolist()
    if aux is primary:
        coefficients[0] += 1.0
        return combine(coefficients, aux.task_gradients)
    one = torch.ones_like(primary.tasks[0])
    v = backward_gradients([primary.tasks[0]], [one], params, retain_graph=primary.graph_needed)
    if problem.gamma != 0.0:
        torch._foreach_add_(v, combine(coefficients, aux.task_gradients))
    return v


def _hessian_products(problem: MetaProblem) -> tuple[HVP, HVPSampler]:
    """The products with the Hessian of ``M(l(w))`` (phi frozen) on the aux batch, and a
    sampler of those on a batch drawn by ``problem.draw_batch``."""
    meta = problem.meta.frozen()

    def products_on(losses: PinnedLosses) -> HVP:
        return lambda x: problem.products.hvp(losses, problem.params, meta, x)

    def sample_hvp() -> HVP:
        return products_on(problem.aux.losses.on(problem.draw_batch()))

    return products_on(problem.aux.losses), sample_hvp


def _phi_hypergradient(
    problem: MetaProblem, jvp: torch.Tensor, dmeta_dl: torch.Tensor, residual: torch.Tensor
) -> list[torch.Tensor]:
    """``direct - d/dphi sum_t c_t dM/dl_t`` from ``c = reduce(jvp)``."""
    c = problem.reduce(jvp.to(problem.meta.dtype))
    objective = -(c.detach() * dmeta_dl).sum()
    if problem.direct_grad:
        objective = objective + problem.gamma * residual.abs()
    with problem.meta.precision():  # a backward through the meta network only
        grads = problem.meta.phi_grads(objective)
    return [problem.reduce(g) for g in grads]


def unrolled_hypergradient(problem: MetaProblem, inner_weights: InnerWeights) -> Hypergradient:
    """``dL_pri/dphi`` at the weights ``inner_weights(w, inner_loss)`` returns, which depend
    differentiably on phi through ``inner_loss(w) = M(l(w; B_aux); phi)``. The products backend
    is not used."""
    primary, aux, meta = problem.primary.losses, problem.aux.losses, problem.meta
    weights = {n: p for n, p in problem.params}
    inner = inner_weights(weights, lambda w: meta(aux.at(w)))
    with torch.enable_grad():
        with math_attention():
            l_pri_values = primary.at(inner)
            aux_values = l_pri_values if aux is primary else aux.at(inner)
        objective_meta = meta if problem.direct_grad else meta.frozen()
        residual = objective_meta(aux_values) - aux_values.sum().to(meta.dtype)
        l_pri = l_pri_values[0].to(meta.dtype) + problem.gamma * residual.abs()
    grads = [problem.reduce(g) for g in meta.phi_grads(l_pri)]
    return Hypergradient(grads, float(l_pri.detach()))


class FidelityProbe:
    """How good the configured hypergradient is on this model: every ``every`` meta steps (0:
    never), a reference hypergradient on the same batches from ``solver`` with ``products``
    (an object with ``hypergradient(problem)``; a products backend), compared with the
    configured one by ``compare``."""

    def __init__(self, every: int, solver: Any, products: Products) -> None:
        self.every = require_int("fidelity_every", every, 0)
        self.solver = solver
        self.products = products

    def is_due(self, meta_steps: int) -> bool:
        """Whether the meta step numbered ``meta_steps`` (from 1) is probed."""
        return bool(self.every) and meta_steps % self.every == 0

    @staticmethod
    def compare(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
        """``meta/fidelity_cosine`` (the cosine between the two) and
        ``meta/fidelity_norm_ratio`` (configured norm / reference norm)."""
        a = torch.cat([g.detach().double().reshape(-1) for g in grads])
        b = torch.cat([g.detach().double().reshape(-1) for g in reference])
        denominator = float(a.norm() * b.norm())
        return {
            "meta/fidelity_cosine": float(a @ b) / denominator if denominator else math.nan,
            "meta/fidelity_norm_ratio": float(a.norm() / b.norm()) if b.norm() else math.nan,
        }
