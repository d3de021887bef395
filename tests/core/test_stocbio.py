"""StocBIO's estimate of H^{-1} v in expectation, against closed forms.

Per-batch Hessians ``H_j`` are drawn independently with mean ``H``. The paper's estimator
``q = alpha sum_{i<=Q} r_i``, ``r_i = (I - alpha H_i) r_{i-1}``, ``r_0 = v`` has the expectation
``alpha sum_{i<=Q} (I - alpha H)^i v`` (the expectation of a product of independent factors is
the product of their expectations), which tends to ``H^{-1} v`` as Q grows.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from meltr.solvers import Neumann, StocBIO

DIM = 4


def _spd(generator: torch.Generator, scale: float) -> torch.Tensor:
    x = torch.randn(DIM, DIM, generator=generator, dtype=torch.float64)
    return scale * (x @ x.T / DIM + 0.3 * torch.eye(DIM, dtype=torch.float64))


def _expected(mean_hessian: torch.Tensor, v: torch.Tensor, steps: int, alpha: float):
    """``alpha sum_{i<=steps} (I - alpha H)^i v``, written out as matrix powers."""
    step = torch.eye(DIM, dtype=torch.float64) - alpha * mean_hessian
    return alpha * sum(torch.linalg.matrix_power(step, i) @ v for i in range(steps + 1))


def _scripted_sampler(hessians: list[torch.Tensor]):
    """A ``sample_hvp`` returning the products of ``hessians`` in order, one per call."""
    queue = iter(hessians)

    def sample_hvp():
        hessian = next(queue)
        return lambda x: [hessian @ x[0]]

    return sample_hvp


def _unused_hvp(x):
    raise AssertionError("StocBIO must not use the aux batch's products")


def test_mean_over_every_draw_sequence_is_the_closed_form_expectation():
    """Three equally likely per-batch Hessians, three products: the mean of the estimator over
    all 27 equally likely draw sequences is its exact expectation."""
    generator = torch.Generator().manual_seed(0)
    hessians = [_spd(generator, 0.8) for _ in range(3)]
    v = torch.randn(DIM, generator=generator, dtype=torch.float64)
    steps, alpha = 3, 0.5
    solver = StocBIO(steps=steps, alpha=alpha)
    estimates = [
        solver.solve(_unused_hvp, [v], _scripted_sampler([hessians[i] for i in sequence]))[0]
        for sequence in itertools.product(range(3), repeat=steps)
    ]
    mean = torch.stack(estimates).mean(0)
    expected = _expected(torch.stack(hessians).mean(0), v, steps, alpha)
    torch.testing.assert_close(mean, expected, rtol=1e-12, atol=1e-12)
    # One batch reused for every product (Neumann on a drawn batch) has another expectation,
    # E[(I - alpha H_j)^i] != (I - alpha E H_j)^i: the test tells the two apart.
    reused = torch.stack(
        [Neumann(steps, alpha).solve(lambda x, h=h: [h @ x[0]], [v])[0] for h in hessians]
    ).mean(0)
    assert (reused - expected).norm() > 1e-3 * expected.norm()


def test_sample_mean_tends_to_the_inverse_hessian_as_steps_grow():
    """Many independent estimates at once (one per row): per-row Hessians ``H + E``, E a random
    symmetric perturbation drawn anew for every product. The rows' mean matches the closed-form
    expectation within its standard error, and approaches ``H^{-1} v`` as the steps grow."""
    draws = 20000
    generator = torch.Generator().manual_seed(1)
    mean_hessian = _spd(generator, 1.0)
    v = torch.randn(DIM, generator=generator, dtype=torch.float64)
    alpha = float(1.0 / torch.linalg.eigvalsh(mean_hessian).max())
    target = torch.linalg.solve(mean_hessian, v)

    def sample_hvp():
        noise = 0.3 * torch.randn(draws, DIM, DIM, generator=generator, dtype=torch.float64)
        per_row = mean_hessian + (noise + noise.transpose(1, 2)) / 2
        return lambda x: [torch.einsum("nij,nj->ni", per_row, x[0])]

    errors = []
    for steps in (2, 10, 60):
        estimates = StocBIO(steps=steps, alpha=alpha).solve(
            _unused_hvp, [v.expand(draws, DIM)], sample_hvp
        )[0]
        mean = estimates.mean(0)
        standard_error = estimates.std(0) / draws**0.5
        expected = _expected(mean_hessian, v, steps, alpha)
        assert ((mean - expected).abs() < 5 * standard_error + 1e-12).all(), steps
        errors.append(float((mean - target).norm() / target.norm()))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.02


def test_zero_steps_is_alpha_v_and_draws_nothing():
    v = torch.arange(DIM, dtype=torch.float64)
    q = StocBIO(steps=0, alpha=0.25).solve(_unused_hvp, [v])
    torch.testing.assert_close(q[0], 0.25 * v)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"steps": -1}, "steps must be >= 0"), ({"alpha": 0}, "alpha must be")]
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StocBIO(**kwargs)


def test_without_a_sampler_it_names_what_it_needs():
    with pytest.raises(ValueError, match="needs sample_hvp"):
        StocBIO(steps=1).solve(_unused_hvp, [torch.ones(DIM)])
