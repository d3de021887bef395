"""The exact, damped implicit hypergradient that ``tools/bench_hypergrad.py`` measures the solvers
against, computed independently of ``meltr``'s solvers and products (see
``meltr.benchmarks.hypergrad``'s docstring), and the damped solver the benchmark runs beside it."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from meltr.benchmarks.common import GAMMA, dot
from meltr.benchmarks.transformer import loss_source
from meltr.hypergradients import HVPSampler
from meltr.objective import math_attention
from meltr.solvers import ImplicitSolver, Neumann

POWER_ITERATIONS = 10
DAMPING_OVER_RADIUS = 2.0
REFERENCE_TOL, REFERENCE_MAXITER = 1e-10, 200

Vector = list[torch.Tensor]


def _norm(a: Sequence[torch.Tensor]) -> float:
    return float(dot(a, a).sqrt())


def spectral_radius(hvp: Callable[[Vector], Vector], like: Vector, iterations: int) -> float:
    """Power-iteration estimate of max |eigenvalue| of the symmetric operator ``hvp``
    (an underestimate that tightens with ``iterations``)."""
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in like]
    radius = 0.0
    for _ in range(iterations):
        scale = _norm(x)
        x = [t / scale for t in x]
        x = hvp(x)
        radius = _norm(x)
    return radius


def conjugate_gradient(
    matvec: Callable[[Vector], Vector], b: Vector, tol: float, maxiter: int
) -> tuple[Vector, int, float]:
    """Solve ``A x = b`` for symmetric positive definite A: (x, iterations, relative residual).
    RuntimeError on non-positive curvature ``p . A p <= 0`` (A not positive definite)."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr, b_norm = float(dot(r, r)), _norm(b)
    for iteration in range(1, maxiter + 1):
        ap = matvec(p)
        curvature = float(dot(p, ap))
        if curvature <= 0:
            raise RuntimeError(
                f"reference CG met curvature {curvature:.3e} <= 0 at iteration {iteration}: "
                "H + lambda I is not positive definite; raise DAMPING_OVER_RADIUS"
            )
        step = rr / curvature
        x = [xi + step * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - step * api for ri, api in zip(r, ap, strict=True)]
        rr_new = float(dot(r, r))
        if rr_new**0.5 <= tol * b_norm:
            return x, iteration, rr_new**0.5 / b_norm
        p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p, strict=True)]
        rr = rr_new
    raise RuntimeError(f"reference CG did not reach tol {tol} in {maxiter} iterations")


@dataclass
class Reference:
    hypergradient: Vector
    radius: float
    damping: float
    cg_iterations: int
    cg_residual: float


def exact_reference(model: nn.Module, meta: nn.Module, batch: dict) -> Reference:
    """The damped implicit hypergradient in float64 by double backward: ``lambda = 2 rho``
    (rho the spectral radius of H by power iteration), ``q* = (H + lambda I)^-1 v`` by conjugate
    gradient to a relative residual of 1e-10, then ``gamma d|M - sum l|/dphi - d/dphi (q* .
    grad_w M)``. ``model`` and ``meta`` are copied, not changed."""
    model64, meta64 = copy.deepcopy(model).double(), copy.deepcopy(meta).double()
    params = [p for p in model64.parameters() if p.requires_grad]
    phi = list(meta64.parameters())
    with math_attention():
        losses = torch.stack(list(loss_source(model64, batch).values()))
        meta_value = meta64(losses)
        residual = meta_value - losses.sum()
        v = torch.autograd.grad(losses[0] + GAMMA * residual.abs(), params, retain_graph=True)
        grad_w = torch.autograd.grad(meta_value, params, create_graph=True)

        def hvp(x: Vector) -> Vector:
            return list(torch.autograd.grad(dot(grad_w, x), params, retain_graph=True))

        radius = spectral_radius(hvp, params, POWER_ITERATIONS)
        damping = float(f"{DAMPING_OVER_RADIUS * radius:.3g}")
        q, iterations, final_residual = conjugate_gradient(
            lambda x: [h + damping * t for h, t in zip(hvp(x), x, strict=True)],
            list(v),
            REFERENCE_TOL,
            REFERENCE_MAXITER,
        )
        objective = GAMMA * residual.abs() - dot(grad_w, q)
        grads = torch.autograd.grad(objective, phi, allow_unused=True, materialize_grads=True)
    return Reference(list(grads), radius, damping, iterations, final_residual)


class Damped(ImplicitSolver):
    """An implicit solver applied to ``H + damping I`` instead of H (``sample_hvp`` unused)."""

    def __init__(self, solver: Neumann, damping: float) -> None:
        self.solver = solver
        self.damping = damping

    def solve(
        self,
        hvp: Callable[[Vector], Vector],
        v: Sequence[torch.Tensor],
        sample_hvp: HVPSampler | None = None,
    ) -> Vector:
        return self.solver.solve(
            lambda x: [h + self.damping * t for h, t in zip(hvp(x), x, strict=True)], v
        )

    def __repr__(self) -> str:
        return f"{self.solver!r} on H + {self.damping:.3g} I"
