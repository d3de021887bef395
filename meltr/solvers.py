"""Hypergradient solvers: how ``q ~= H^{-1} v`` is obtained (docs/design.md, section 1).

Every solver computes the hypergradient of a ``meltr.hypergradients.MetaProblem`` through one
method, ``hypergradient(problem)``, and says whether a data-parallel run can execute it
(``supports_data_parallel``) and whether it multiplies by the Hessian (``uses_hvp``; when it does
not, the products backend's HVP is never called).

``Identity``, ``Neumann``, ``ConjugateGradient`` and ``StocBIO`` are implicit solvers
(``ImplicitSolver``): ``solve(hvp, v, sample_hvp)`` maps the gradient ``v = dL_pri/dw`` (a list of
tensors shaped like the trainable parameters) to ``q`` using only Hessian-vector products:
``hvp(x) = H x`` with the Hessian of ``L_aux`` on the aux batch, and ``sample_hvp()``, which draws
a fresh batch (the learner draws from its replay buffer) and returns the products ``x -> H_j x``
on that batch. The deterministic solvers use ``hvp`` only; ``StocBIO`` uses ``sample_hvp`` only.
``Unrolled`` instead differentiates through a few inner updates (``inner_weights``). No solver
modifies the model.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence

import torch
import torchopt

from meltr.hypergradients import (
    HVP,
    HVPSampler,
    Hypergradient,
    MetaProblem,
    Vector,
    implicit_hypergradient,
    unrolled_hypergradient,
)
from meltr.objective import math_attention


class ImplicitSolver(abc.ABC):
    """A solver of ``H q = v`` from Hessian-vector products; its hypergradient is the implicit
    one (``meltr.hypergradients.implicit_hypergradient``). Runs data-parallel (with
    finite-difference products, which need only forwards and backwards)."""

    supports_data_parallel = True
    uses_hvp = True

    def hypergradient(self, problem: MetaProblem) -> Hypergradient:
        return implicit_hypergradient(problem, self.solve)

    @abc.abstractmethod
    def solve(
        self, hvp: HVP, v: Sequence[torch.Tensor], sample_hvp: HVPSampler | None = None
    ) -> Vector:
        """``q ~= H^{-1} v`` (see the module docstring)."""


class Identity(ImplicitSolver):
    """``q = v``: the inverse Hessian taken as the identity (AID-FP-Lite; no HVP)."""

    uses_hvp = False

    def solve(
        self, hvp: HVP, v: Sequence[torch.Tensor], sample_hvp: HVPSampler | None = None
    ) -> Vector:
        return list(v)

    def __repr__(self) -> str:
        return "Identity()"


class Neumann(ImplicitSolver):
    """``q = alpha * sum_{j=0..steps} (I - alpha H)^j v`` (``steps`` HVPs, ``steps + 1`` terms).

    This is ``torchopt.linalg.ns(H, v, maxiter=steps, alpha=alpha)``; it converges to
    ``H^{-1} v`` when ``0 < alpha < 2 / lambda_max(H)`` and H is positive definite.
    """

    def __init__(self, steps: int = 3, alpha: float = 1.0) -> None:
        if steps < 0:
            raise ValueError(f"{type(self).__name__} steps must be >= 0, got {steps}")
        if alpha <= 0:
            raise ValueError(f"{type(self).__name__} alpha must be > 0, got {alpha}")
        self.steps = steps
        self.alpha = alpha

    def solve(
        self, hvp: HVP, v: Sequence[torch.Tensor], sample_hvp: HVPSampler | None = None
    ) -> Vector:
        q = torchopt.linalg.ns(
            lambda x: tuple(hvp(list(x))), tuple(v), self.steps, alpha=self.alpha
        )
        return list(q)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, alpha={self.alpha})"


class ConjugateGradient(ImplicitSolver):
    """Conjugate gradient on ``(H + damping I) q = v`` from ``q = 0``.

    At most ``maxiter`` iterations (one HVP each); stops early once the residual satisfies
    ``||v - (H + damping I) q|| <= tol * ||v||``. Built on ``torchopt.linalg.cg`` (its ``rtol``);
    the product with the zero starting point is answered without an HVP.
    """

    def __init__(self, maxiter: int = 10, damping: float = 0.0, tol: float = 1e-6) -> None:
        if maxiter < 1:
            raise ValueError(f"ConjugateGradient maxiter must be >= 1, got {maxiter}")
        if damping < 0:
            raise ValueError(f"ConjugateGradient damping must be >= 0, got {damping}")
        if tol < 0:
            raise ValueError(f"ConjugateGradient tol must be >= 0, got {tol}")
        self.maxiter = maxiter
        self.damping = damping
        self.tol = tol

    def solve(
        self, hvp: HVP, v: Sequence[torch.Tensor], sample_hvp: HVPSampler | None = None
    ) -> Vector:
        def damped(x: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            if not any(bool(t.any()) for t in x):
                return x
            return tuple(h + self.damping * t for h, t in zip(hvp(list(x)), x, strict=True))

        q = torchopt.linalg.cg(damped, tuple(v), maxiter=self.maxiter, rtol=self.tol)
        return list(q)

    def __repr__(self) -> str:
        return f"ConjugateGradient(maxiter={self.maxiter}, damping={self.damping}, tol={self.tol})"


class StocBIO(Neumann):
    """StocBiO's stochastic Neumann estimate of ``H^{-1} v`` (Ji, Yang & Liang, ICML 2021,
    "Bilevel Optimization: Convergence Analysis and Enhanced Design", Algorithm 3)::

        q = alpha * sum_{i=0..steps} r_i,   r_0 = v,   r_i = (I - alpha H_i) r_{i-1},

    where ``H_i`` is the Hessian on the i-th of ``steps`` batches drawn independently
    (``sample_hvp()``, one draw per product; the aux batch's ``hvp`` is not used). The number of
    terms is fixed, as in the paper's StocBiO (unlike the randomly truncated series of Ghadimi &
    Wang's BSA). With independent draws of mean Hessian ``H``, ``E[q] = alpha * sum_{i<=steps}
    (I - alpha H)^i v``: ``Neumann(steps, alpha)`` on ``H``, which tends to ``H^{-1} v`` as
    ``steps`` grows when ``0 < alpha < 2 / lambda_max(H)`` and H is positive definite. It costs
    what ``Neumann(steps)`` costs: every product evaluates its batch anew either way.
    """

    def solve(
        self, hvp: HVP, v: Sequence[torch.Tensor], sample_hvp: HVPSampler | None = None
    ) -> Vector:
        if sample_hvp is None and self.steps > 0:
            raise ValueError("StocBIO needs sample_hvp, the products on freshly drawn batches")
        term = list(v)
        total = [t.clone() for t in term]
        for _ in range(self.steps):
            product = sample_hvp()(term)
            term = [t - self.alpha * h for t, h in zip(term, product, strict=True)]
            torch._foreach_add_(total, term)
        return torch._foreach_mul(total, self.alpha)


class Unrolled:
    """Iterative differentiation: ``steps`` differentiable inner updates, then ``d L_pri / d phi``.

    Starting from a detached functional copy of the weights, each step applies the torchopt
    functional optimizer (``"sgd"`` or ``"adam"``, learning rate ``lr``) to
    ``grad_w M(l(w; B_aux); phi)`` with ``create_graph=True``, so the result depends
    differentiably on phi. Needs double backward through the backbone: runs under the math
    attention kernel, in one process only (sharded parameters are freed after use). The products
    backend is not used.
    """

    supports_data_parallel = False
    uses_hvp = False
    OPTIMIZERS = ("sgd", "adam")

    def __init__(self, steps: int = 3, lr: float = 1e-3, optimizer: str = "sgd") -> None:
        if steps < 1:
            raise ValueError(f"Unrolled steps must be >= 1, got {steps}")
        if optimizer not in self.OPTIMIZERS:
            raise ValueError(
                f"Unrolled optimizer must be one of {self.OPTIMIZERS}, got {optimizer!r}"
            )
        self.steps = steps
        self.lr = lr
        self.optimizer = optimizer

    def hypergradient(self, problem: MetaProblem) -> Hypergradient:
        return unrolled_hypergradient(problem, self.inner_weights)

    def inner_weights(
        self,
        weights: Mapping[str, torch.Tensor],
        inner_loss: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Weights after ``steps`` differentiable updates on ``inner_loss(weights)`` (a scalar
        that depends on phi), starting from a detached copy of ``weights``."""
        transform = torchopt.sgd(self.lr) if self.optimizer == "sgd" else torchopt.adam(self.lr)
        current = {name: w.detach().requires_grad_() for name, w in weights.items()}
        state = transform.init(current)
        with math_attention(), torch.enable_grad():
            for _ in range(self.steps):
                loss = inner_loss(current)
                grads = torch.autograd.grad(
                    loss, list(current.values()), create_graph=True, allow_unused=True
                )
                grads = {
                    name: torch.zeros_like(w) if g is None else g
                    for (name, w), g in zip(current.items(), grads, strict=True)
                }
                updates, state = transform.update(grads, state, params=current, inplace=False)
                current = torchopt.apply_updates(current, updates, inplace=False)
        return current

    def __repr__(self) -> str:
        return f"Unrolled(steps={self.steps}, lr={self.lr}, optimizer={self.optimizer!r})"


Solver = ImplicitSolver | Unrolled
SOLVERS = (Identity, Neumann, ConjugateGradient, StocBIO, Unrolled)


def check_solver(solver: object) -> None:
    """ValueError unless ``solver`` is a solver instance (naming the fix for a class)."""
    if isinstance(solver, type):
        raise ValueError(
            f"solver must be an instance, got the class {solver.__name__}: "
            f"pass {solver.__name__}() (in gin: @{solver.__name__}())"
        )
    if not callable(getattr(solver, "hypergradient", None)):
        raise ValueError(f"solver must be one of meltr.solvers' classes, got {solver!r}")
