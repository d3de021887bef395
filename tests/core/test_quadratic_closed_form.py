"""Hypergradients on quadratic tasks at the exact inner optimum against closed forms.

Tasks ``l_t(w) = 0.5 mean((X_t w - y_t)^2)`` with ``M = sum_t lam_t l_t`` (LinearMetaLoss).
With ``A_t = X_t^T X_t / n``, ``b_t = X_t^T y_t / n`` on the aux batch:
``grad l_t(w) = A_t w - b_t``, ``H = sum_t lam_t A_t``, ``w* = H^{-1} sum_t lam_t b_t``.
With ``s = sign(sum_t (lam_t - 1) l_t(w*))`` (aux batch) and ``g_val = grad l_0(w*; B_pri)``:

    v      = g_val + gamma * s * sum_t (lam_t - 1) grad l_t(w*)
    dL/dlam_s = gamma * s * l_s(w*)  [direct term]  -  (P v) . grad l_s(w*)

where ``P = H^{-1}`` (CG), ``I`` (Identity) or ``alpha sum_{j<=K} (I - alpha H)^j`` (Neumann).
StocBIO takes its K products on batches drawn from the replay buffer:
``P = alpha sum_{i<=K} prod_{k<=i} (I - alpha H_{b_k})`` (later factors on the left) with
``H_b`` the Hessian of batch b and ``b_k`` the learner's draws.
``Unrolled(K, lr, "sgd")`` started at w* equals the Neumann form with ``K - 1`` steps and
``alpha = lr`` (the inner iterates stay at w*; their derivative in lam is that sum).
"""

from __future__ import annotations

import pytest
import torch
from core_toys import Quadratic, quadratic_batch, quadratic_source, relative_error

import meltr
from meltr.products import make_products
from meltr.solvers import ConjugateGradient, Identity, Neumann, StocBIO, Unrolled

DIM, TASKS, N = 6, 3, 20
LAMBDA = [1.0, 0.5, 0.3]


def _setup(dtype, gamma, direct_grad=True, solver=None, products="autograd"):
    aux = quadratic_batch(TASKS, N, DIM, dtype, seed=1)
    primary = quadratic_batch(TASKS, N, DIM, dtype, seed=2)
    model = Quadratic(DIM, dtype)
    meta = meltr.LinearMetaLoss(TASKS, init=LAMBDA).to(dtype)
    A = torch.einsum("tni,tnj->tij", aux["x"], aux["x"]) / N
    b = torch.einsum("tni,tn->ti", aux["x"], aux["y"]) / N
    lam = torch.tensor(LAMBDA, dtype=dtype)
    H = torch.einsum("t,tij->ij", lam, A)
    w_star = torch.linalg.solve(H, torch.einsum("t,ti->i", lam, b))
    with torch.no_grad():
        model.w.copy_(w_star)
    learner = meltr.MetaLearner(
        model,
        meta,
        quadratic_source,
        torch.optim.SGD(model.parameters(), lr=0.1),
        torch.optim.SGD(meta.parameters(), lr=0.1),
        solver=solver or Identity(),
        products=products,
        gamma=gamma,
        direct_grad=direct_grad,
    )

    grad_l = A @ w_star - b  # [T, dim]
    l_aux = torch.stack(
        [0.5 * ((aux["x"][t] @ w_star - aux["y"][t]) ** 2).mean() for t in range(TASKS)]
    )
    A_pri = primary["x"][0].T @ primary["x"][0] / N
    g_val = A_pri @ w_star - primary["x"][0].T @ primary["y"][0] / N
    s = torch.sign(((lam - 1) * l_aux).sum())
    v = g_val + gamma * s * ((lam - 1)[:, None] * grad_l).sum(0)
    direct = gamma * s * l_aux if direct_grad else torch.zeros_like(l_aux)

    def closed_form(P: torch.Tensor) -> list[torch.Tensor]:
        return [direct - grad_l @ (P @ v)]

    return learner, primary, aux, H, closed_form


def _neumann_matrix(H, steps, alpha):
    eye = torch.eye(H.shape[0], dtype=H.dtype)
    return alpha * sum(torch.linalg.matrix_power(eye - alpha * H, j) for j in range(steps + 1))


def _alpha(H):
    return float(1.0 / torch.linalg.eigvalsh(H).max())


PRODUCTS_TOL = {
    "autograd": 1e-5,
    "forward": 1e-5,
    "task_gradients": 1e-5,
    "finite_difference": 1e-3,
    "finite_difference_one_sided": 1e-3,
}


@pytest.mark.parametrize("products", sorted(PRODUCTS_TOL))
@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_conjugate_gradient_matches_inverse_hessian(products, gamma):
    solver = ConjugateGradient(maxiter=DIM, tol=1e-12)
    learner, primary, aux, H, closed_form = _setup(torch.float64, gamma, True, solver, products)
    expected = closed_form(torch.linalg.inv(H))
    assert relative_error(learner.hypergradient(primary, aux), expected) < PRODUCTS_TOL[products]


@pytest.mark.parametrize("products", sorted(PRODUCTS_TOL))
@pytest.mark.parametrize("direct_grad", [True, False])
def test_identity_and_direct_term(products, direct_grad):
    learner, primary, aux, H, closed_form = _setup(torch.float64, 0.5, direct_grad, None, products)
    expected = closed_form(torch.eye(DIM, dtype=torch.float64))
    assert relative_error(learner.hypergradient(primary, aux), expected) < PRODUCTS_TOL[products]


@pytest.mark.parametrize("products", sorted(PRODUCTS_TOL))
@pytest.mark.parametrize("solver", [Neumann, StocBIO])
def test_neumann_partial_sum(products, solver):
    """StocBIO with an empty replay buffer draws the aux batch for every product: Neumann."""
    learner, primary, aux, H, closed_form = _setup(torch.float64, 0.5, True, None, products)
    alpha = _alpha(H)
    learner.solver = solver(steps=4, alpha=alpha)
    expected = closed_form(_neumann_matrix(H, 4, alpha))
    assert relative_error(learner.hypergradient(primary, aux), expected) < PRODUCTS_TOL[products]


def test_neumann_approaches_conjugate_gradient_as_steps_grow():
    learner, primary, aux, H, _ = _setup(torch.float64, 0.0, products="forward")
    learner.solver = ConjugateGradient(maxiter=DIM, tol=1e-12)
    cg = learner.hypergradient(primary, aux)
    errors = []
    for steps in (2, 20, 400):
        learner.solver = Neumann(steps=steps, alpha=_alpha(H))
        errors.append(relative_error(learner.hypergradient(primary, aux), cg))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6


def _hessian(batch: dict) -> torch.Tensor:
    """``H = sum_t lam_t X_t^T X_t / n`` of one quadratic batch."""
    A = torch.einsum("tni,tnj->tij", batch["x"], batch["x"]) / N
    return torch.einsum("t,tij->ij", torch.tensor(LAMBDA, dtype=A.dtype), A)


@pytest.mark.parametrize("products", ["autograd", "finite_difference"])
def test_stocbio_takes_each_product_on_a_fresh_buffer_draw(products):
    learner, primary, aux, H, closed_form = _setup(torch.float64, 0.5, True, None, products)
    buffer = [quadratic_batch(TASKS, N, DIM, torch.float64, seed=10 + k) for k in range(4)]
    learner.buffer.extend(buffer)
    steps, alpha = 5, 0.5 * _alpha(H)
    learner.solver = StocBIO(steps=steps, alpha=alpha)
    replay = torch.Generator()
    replay.set_state(learner.generator.get_state())
    drawn = [int(torch.randint(len(buffer), (1,), generator=replay)) for _ in range(steps)]
    assert len(set(drawn)) > 1  # the draws differ, so one reused batch would not match
    eye = torch.eye(DIM, dtype=torch.float64)
    term, P = eye, eye.clone()
    for index in drawn:
        term = (eye - alpha * _hessian(buffer[index])) @ term
        P = P + term
    before = learner.generator.get_state()
    got = learner.hypergradient(primary, aux)
    assert relative_error(got, closed_form(alpha * P)) < PRODUCTS_TOL[products]
    assert torch.equal(learner.generator.get_state(), before)  # a query draws nothing for good


@pytest.mark.parametrize("gamma", [0.0, 0.5])
def test_unrolled_sgd_equals_neumann_form(gamma):
    learner, primary, aux, H, closed_form = _setup(torch.float64, gamma)
    learner.solver = Unrolled(steps=4, lr=0.05, optimizer="sgd")
    expected = closed_form(_neumann_matrix(H, 3, 0.05))
    assert relative_error(learner.hypergradient(primary, aux), expected) < 1e-7


def test_float32_conjugate_gradient():
    solver = ConjugateGradient(maxiter=DIM, tol=0.0)
    learner, primary, aux, H, closed_form = _setup(torch.float32, 0.5, True, solver, "forward")
    expected = closed_form(torch.linalg.inv(H.double()).float())
    assert relative_error(learner.hypergradient(primary, aux), expected) < 1e-3


def test_float32_finite_difference_identity():
    learner, primary, aux, H, closed_form = _setup(torch.float32, 0.5, True)
    learner.products = make_products("finite_difference")
    expected = closed_form(torch.eye(DIM))
    # Central differences are exact on quadratics but for rounding; in float32 the step that keeps
    # truncation error small on real-size networks (meltr/finite_differences.py) leaves about 5e-3
    # of it on these 6 weights (rounding averages out over many weights, not over 6).
    assert relative_error(learner.hypergradient(primary, aux), expected) < 1e-2
