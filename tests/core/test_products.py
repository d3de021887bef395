"""Finite-difference products: step rule, one-sided scheme, bit-exact restore, autocast cache."""

from __future__ import annotations

import pytest
import torch
from core_toys import MLP
from torch import nn

from meltr import finite_differences, gradients
from meltr.finite_differences import (
    FiniteDifference,
    finite_difference_step,
    perturbed_evaluations,
    relative_step,
)
from meltr.objective import PinnedLosses


class Elementwise(nn.Module):
    """``w`` of shape ``[n]``; no operation autocast would run in low precision."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.0, 2.0, n, dtype=torch.float64))


def quadratic_source(model: nn.Module, batch: dict) -> dict:
    """``l_t = 0.5 * sum(a_t * w^2) + b_t . w``: gradient ``a_t * w + b_t``, Hessian
    ``diag(a_t)``."""
    return {
        f"task{t}": 0.5 * (batch["a"][t] * model.w**2).sum() + (batch["b"][t] * model.w).sum()
        for t in range(batch["a"].shape[0])
    }


def _quadratic(n: int = 7, tasks: int = 3):
    g = torch.Generator().manual_seed(0)
    model = Elementwise(n)
    batch = {
        "a": torch.rand(tasks, n, generator=g, dtype=torch.float64) + 0.5,
        "b": torch.randn(tasks, n, generator=g, dtype=torch.float64),
    }
    losses = PinnedLosses(model, quadratic_source, batch, [f"task{t}" for t in range(tasks)])
    tangent = [torch.randn(n, generator=g, dtype=torch.float64)]
    return model, batch, losses, tangent


def test_step_rule_matches_its_formula_across_scratch_chunks():
    g = torch.Generator().manual_seed(1)
    big = (3 * finite_differences._CHUNK + 17,)  # several scratch slices and a partial one
    params = [
        ("a", nn.Parameter(torch.randn(big, generator=g))),
        ("b", nn.Parameter(torch.ones(5))),
    ]
    tangent = [torch.randn(big, generator=g), torch.full((5,), -2.0)]
    overlap = sum(
        (p.detach().double().abs() * t.double().abs()).sum()
        for (_, p), t in zip(params, tangent, strict=True)
    )
    tangent_sq = sum(t.double().pow(2).sum() for t in tangent)
    expected = 1e-5 * float(overlap / tangent_sq)
    # float32 accumulation over ~8e5 terms
    assert finite_difference_step(params, tangent, 1e-5) == pytest.approx(expected, rel=1e-4)
    assert finite_difference_step(params, [torch.zeros(big), torch.zeros(5)], 1e-5) == 0.0
    # w zero where q is not: the perturbation's norm is the fraction itself
    zero = [("w", nn.Parameter(torch.zeros(4)))]
    assert finite_difference_step(zero, [torch.full((4,), 3.0)], 1e-5) * 6.0 == pytest.approx(1e-5)


def test_relative_steps_per_scheme_and_precision():
    f32 = [("w", nn.Parameter(torch.ones(2)))]
    f64 = [("w", nn.Parameter(torch.ones(2, dtype=torch.float64)))]
    u32, u64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps
    assert relative_step("central", f32) == pytest.approx(4.4e-3 * u32 ** (1 / 3))
    assert relative_step("central", f64) == pytest.approx(4.4e-3 * u64 ** (1 / 3))
    assert relative_step("one_sided", f32) == pytest.approx(u32**0.5 / 32)
    assert relative_step("hvp", f64) == pytest.approx(u64**0.5 / 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert relative_step("central", f32) == 1.7e-4
        assert relative_step("one_sided", f32) == 4.3e-5
        assert relative_step("hvp", f32) == pytest.approx(u32**0.5 / 2)


def test_one_sided_jvp_equals_its_closed_form_on_quadratics():
    """On ``l_t = 0.5 w.A_t w + b_t.w``: ``(l(w + eps q) - l(w)) / eps = g_t.q + eps/2 q.A_t q``
    exactly (up to rounding), with eps from the one-sided step rule."""
    model, batch, losses, (q,) = _quadratic()
    params = list(model.named_parameters())
    eps = finite_difference_step(params, [q], relative_step("one_sided", params))
    w = model.w.detach()
    grad_dot_q = ((batch["a"] * w + batch["b"]) * q).sum(dim=1)
    curvature = (batch["a"] * q * q).sum(dim=1)
    expected = grad_dot_q + 0.5 * eps * curvature
    one_sided = FiniteDifference(one_sided=True).loss_jvp(losses, params, [q])
    torch.testing.assert_close(one_sided, expected, rtol=1e-6, atol=0.0)
    central = FiniteDifference().loss_jvp(losses, params, [q])  # exact on quadratics
    torch.testing.assert_close(central, grad_dot_q, rtol=1e-6, atol=0.0)


def test_one_sided_jvp_uses_the_given_values_and_one_forward():
    model, batch, losses, (q,) = _quadratic()
    params = list(model.named_parameters())
    calls = []

    def counting(model, batch):
        calls.append(torch.is_grad_enabled())
        return quadratic_source(model, batch)

    counted = PinnedLosses(model, counting, batch, losses.keys)
    values = losses().detach()
    eps = finite_difference_step(params, [q], relative_step("one_sided", params))
    backend = FiniteDifference(one_sided=True)
    reference = backend.loss_jvp(counted, params, [q], values=values)
    assert calls == [False]  # only the perturbed forward
    shifted = backend.loss_jvp(counted, params, [q], values=values + 1.0)
    torch.testing.assert_close(shifted, reference - 1.0 / eps)


def test_perturbed_evaluations_restore_the_weights_bit_exactly_even_on_error():
    torch.manual_seed(0)
    model = MLP()
    params = list(model.named_parameters())
    before = [p.detach().clone() for _, p in params]
    versions = [p._version for _, p in params]
    tangent = [torch.randn_like(p) * 1e3 for _, p in params]
    seen = []
    results = perturbed_evaluations(
        params, tangent, (0.1, -0.3), lambda: seen.append(params[0][1].detach().clone())
    )
    assert len(results) == 2
    torch.testing.assert_close(seen[0], before[0] + 0.1 * tangent[0])
    torch.testing.assert_close(seen[1], before[0] - 0.3 * tangent[0])

    def failing():
        raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError, match="forward failed"):
        perturbed_evaluations(params, tangent, (0.1,), failing)
    for (_, p), saved, version in zip(params, before, versions, strict=True):
        assert torch.equal(p.detach(), saved)
        assert p._version == version  # graphs recorded before the call stay usable


def test_perturbed_forwards_see_the_perturbation_inside_one_autocast_region():
    """Autocast caches each weight's bf16 copy per region: without clearing it after every
    perturbation, a perturbed forward reuses the copy of the unperturbed weights."""
    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    params = list(model.named_parameters())
    tangent = [torch.randn_like(p) for _, p in params]
    shifted = nn.Linear(8, 4)
    with torch.no_grad():
        for (_, p), s, t in zip(params, shifted.parameters(), tangent, strict=True):
            s.copy_(p + 0.5 * t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = shifted(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        base = model(x)  # fills the cache, as the training step's forward does
        (perturbed,) = perturbed_evaluations(params, tangent, (0.5,), lambda: model(x))
        after = model(x)
    assert torch.equal(perturbed, expected)
    assert not torch.equal(perturbed, base)
    assert torch.equal(after, base)


def test_reached_parameters_are_those_autograd_finds_a_gradient_for():
    """Against ``torch.autograd.grad(allow_unused=True)``, which returns None for a parameter
    the output does not depend on; a reached parameter with a zero gradient still counts."""
    torch.manual_seed(0)
    trunk, head_a, head_b, unused = (
        nn.Linear(3, 4),
        nn.Linear(4, 1),
        nn.Linear(4, 1),
        nn.Linear(2, 2),
    )
    params = [
        (f"{module}.{name}", p)
        for module, layer in {"trunk": trunk, "a": head_a, "b": head_b, "u": unused}.items()
        for name, p in layer.named_parameters()
    ]
    features = torch.tanh(trunk(torch.randn(5, 3)))
    tasks = [head_a(features).sum(), head_b(features).sum() * 0.0, trunk.bias.sum()]
    reached = gradients.reached_parameters(tasks, params)
    for task, flags in zip(tasks, reached, strict=True):
        grads = torch.autograd.grad(
            task, [p for _, p in params], allow_unused=True, retain_graph=True
        )
        assert flags == [g is not None for g in grads]
    assert reached[1][4:6] == [True, True]  # head b: reached, its gradient zero
