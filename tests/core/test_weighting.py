"""Baseline loss combiners against their papers' update formulas, written out here."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from core_toys import MLP, mlp_batch, mlp_source

import meltr
from meltr.weighting import (
    FAMO,
    DynamicWeightAverage,
    FixedWeights,
    RandomLossWeighting,
    UncertaintyWeighting,
)

LR = 0.1


def _no_recompute():
    raise AssertionError("this combiner must not spend a forward on recompute()")


def _grad(meta, losses, create_graph=False):
    losses = losses.clone().requires_grad_()
    (grad,) = torch.autograd.grad(meta(losses), losses, create_graph=create_graph)
    return grad, losses


# ---------------------------------------------------------------------------- FixedWeights


@pytest.mark.parametrize("num_tasks", [1, 2, 4])
@pytest.mark.parametrize(
    ("weights", "expected"),
    [("primary", lambda t: [1.0] + [0.0] * (t - 1)), ("sum", lambda t: [1.0] * t)],
)
def test_fixed_weight_presets_are_the_gradient(num_tasks, weights, expected):
    meta = FixedWeights(num_tasks, weights)
    losses = torch.arange(1.0, num_tasks + 1.0)
    grad, _ = _grad(meta, losses)
    assert grad.tolist() == expected(num_tasks)
    weights_list = expected(num_tasks)
    value = sum(w * x for w, x in zip(weights_list, losses.tolist(), strict=True))
    assert float(meta(losses)) == value
    assert not meta.weight.requires_grad and meta.num_tasks == num_tasks


@pytest.mark.parametrize("num_tasks", [1, 3])
def test_fixed_aux_weight_weighs_the_primary_one_and_each_auxiliary_the_same(num_tasks):
    meta = FixedWeights(num_tasks, aux_weight=0.3)
    grad, _ = _grad(meta, torch.arange(1.0, num_tasks + 1.0))
    assert grad.tolist() == pytest.approx([1.0] + [0.3] * (num_tasks - 1))
    with pytest.raises(ValueError, match="not both"):
        FixedWeights(num_tasks, "primary", aux_weight=0.3)
    with pytest.raises(ValueError, match="aux_weight must be a finite number"):
        FixedWeights(num_tasks, aux_weight=float("nan"))


def test_fixed_weights_given_vector_and_bad_input():
    meta = FixedWeights(3, [0.5, 2.0, -1.0])
    grad, _ = _grad(meta, torch.tensor([3.0, 1.0, 7.0]))
    assert grad.tolist() == [0.5, 2.0, -1.0]
    assert float(meta(torch.tensor([3.0, 1.0, 7.0]))) == 1.5 + 2.0 - 7.0
    with pytest.raises(ValueError, match="2 weights"):
        FixedWeights(3, [1.0, 0.0])
    with pytest.raises(ValueError, match="'mean'"):
        FixedWeights(3, "mean")
    with pytest.raises(ValueError, match="num_tasks"):
        FixedWeights(0)
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        meta(torch.ones(4))


# ---------------------------------------------------------------------------- Uncertainty


def test_uncertainty_value_gradient_and_one_sgd_update():
    meta = UncertaintyWeighting(3, init=0.5, optimizer="sgd", lr=0.1)
    losses = torch.tensor([2.0, 0.5, 1.0])
    s = 0.5
    value = sum(math.exp(-s) * x + s for x in losses.tolist())
    torch.testing.assert_close(meta(losses), torch.tensor(value))
    grad, _ = _grad(meta, losses)
    torch.testing.assert_close(grad, torch.full((3,), math.exp(-s)))
    meta.after_update(losses, _no_recompute)
    # s <- s - lr * dM/ds, dM/ds = 1 - exp(-s) l
    expected = [s - 0.1 * (1 - math.exp(-s) * x) for x in losses.tolist()]
    torch.testing.assert_close(meta.log_variance, torch.tensor(expected))


def test_uncertainty_first_adam_step_is_minus_lr_sign():
    meta = UncertaintyWeighting(3, lr=0.025)
    meta.after_update(torch.tensor([2.0, 0.5, 3.0]), _no_recompute)
    # at s = 0, dM/ds = 1 - l = [-1, 0.5, -2]; Adam's first step is -lr * g / |g|
    torch.testing.assert_close(meta.log_variance, torch.tensor([0.025, -0.025, 0.025]))


def test_uncertainty_rule_equals_training_s_jointly_with_torch_adam():
    meta = UncertaintyWeighting(2, init=0.2, lr=0.05, betas=(0.8, 0.99), weight_decay=0.01)
    s = torch.nn.Parameter(torch.full((2,), 0.2))
    reference = torch.optim.Adam([s], lr=0.05, betas=(0.8, 0.99), weight_decay=0.01)
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        losses = torch.rand(2, generator=generator) * 3
        reference.zero_grad()
        (torch.exp(-s) * losses + s).sum().backward()
        reference.step()
        meta.after_update(losses, _no_recompute)
    torch.testing.assert_close(meta.log_variance, s.detach())


# ---------------------------------------------------------------------------- DWA


def _feed(meta, rows):
    for row in rows:
        meta.after_update(torch.tensor(row), _no_recompute)


def _dwa_weights(previous, last, temperature=2.0):
    """``T exp(r_t / temp) / sum_i exp(r_i / temp)``, ``r = last / previous`` (per-window means)."""
    ratios = [a / b for a, b in zip(last, previous, strict=True)]
    exps = [math.exp(r / temperature) for r in ratios]
    return [len(exps) * e / sum(exps) for e in exps]


def test_dwa_weights_from_window_means():
    meta = DynamicWeightAverage(3, window=2)
    _feed(meta, [[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])  # window 0 means [2, 2, 2]
    assert meta.weight.tolist() == [1.0, 1.0, 1.0]
    _feed(meta, [[1.0, 2.0, 6.0], [1.0, 2.0, 2.0]])  # window 1 means [1, 2, 4]
    expected = _dwa_weights([2.0, 2.0, 2.0], [1.0, 2.0, 4.0])
    torch.testing.assert_close(meta.weight, torch.tensor(expected))
    torch.testing.assert_close(meta.weight.sum(), torch.tensor(3.0))
    _feed(meta, [[0.5, 1.0, 1.0]])  # mid-window: weights unchanged
    torch.testing.assert_close(meta.weight, torch.tensor(expected))
    _feed(meta, [[1.5, 3.0, 1.0]])  # window 2 means [1, 2, 1]
    expected = _dwa_weights([1.0, 2.0, 4.0], [1.0, 2.0, 1.0])
    torch.testing.assert_close(meta.weight, torch.tensor(expected))
    grad, _ = _grad(meta, torch.tensor([1.0, 1.0, 1.0]))
    torch.testing.assert_close(grad, torch.tensor(expected))


def test_dwa_temperature_and_bad_input():
    meta = DynamicWeightAverage(2, window=1, temperature=0.5)
    _feed(meta, [[4.0, 1.0], [2.0, 3.0]])
    torch.testing.assert_close(meta.weight, torch.tensor(_dwa_weights([4, 1], [2, 3], 0.5)))
    with pytest.raises(ValueError, match="positive losses"):
        _feed(meta, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="window"):
        DynamicWeightAverage(2, window=0)
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeightAverage(2, temperature=0.0)


# ---------------------------------------------------------------------------- RLW


def test_rlw_weights_are_softmax_of_the_seeded_normal_draws():
    meta = RandomLossWeighting(4, seed=7)
    generator = torch.Generator().manual_seed(7)
    for _ in range(3):
        expected = torch.softmax(torch.randn(4, generator=generator), dim=-1)
        assert torch.equal(meta.weight, expected)
        grad, _ = _grad(meta, torch.rand(4))
        torch.testing.assert_close(grad, expected)
        meta.after_update(torch.rand(4), _no_recompute)


def test_rlw_mean_weight_is_one_over_num_tasks():
    meta = RandomLossWeighting(3, seed=1)
    draws = []
    for _ in range(4000):
        draws.append(meta.weight.clone())
        meta.after_update(torch.ones(3), _no_recompute)
    mean = torch.stack(draws).mean(dim=0)
    # each weight's standard deviation is about 0.2: standard error 0.003
    torch.testing.assert_close(mean, torch.full((3,), 1 / 3), atol=0.015, rtol=0)
    assert len({tuple(d.tolist()) for d in draws}) == len(draws)


# ---------------------------------------------------------------------------- FAMO


def test_famo_value_gradient_and_second_derivative():
    meta = FAMO(3, min_losses=[0.5, 0.0, 0.0], epsilon=0.0).double()
    with torch.no_grad():
        meta.logits.copy_(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64))
    losses = torch.tensor([1.5, 0.4, 2.0], dtype=torch.float64)
    z = torch.softmax(torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64), dim=-1).tolist()
    d = [1.0, 0.4, 2.0]
    c = 1.0 / sum(zt / dt for zt, dt in zip(z, d, strict=True))
    value = c * sum(zt * math.log(dt) for zt, dt in zip(z, d, strict=True))
    torch.testing.assert_close(meta(losses), torch.tensor(value, dtype=torch.float64))
    grad, inputs = _grad(meta, losses, create_graph=True)
    expected = [c * zt / dt for zt, dt in zip(z, d, strict=True)]
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))
    assert (
        abs(float(grad.detach().sum()) - 1.0) < 1e-12
    )  # a convex combination of the task gradients
    hessian = torch.stack([torch.autograd.grad(g, inputs, retain_graph=True)[0] for g in grad])
    expected = torch.diag(torch.tensor([-c * zt / dt**2 for zt, dt in zip(z, d, strict=True)]))
    torch.testing.assert_close(hessian, expected.double())


def test_famo_two_sgd_logit_updates_by_hand():
    beta, gamma = 0.5, 0.1
    meta = FAMO(2, optimizer="sgd", lr=beta, weight_decay=gamma, epsilon=0.0)
    meta.after_update(torch.tensor([2.0, 1.0]), lambda: torch.tensor([1.0, 0.9]))
    # step 1 at xi = 0: z = (1/2, 1/2), delta = (log 2, -log 0.9),
    # J_z^T delta = z * (delta - z . delta) = (+-(log 2 + log 0.9) / 4), decay term gamma * 0
    g1 = (math.log(2.0) + math.log(0.9)) / 4
    xi = [-beta * g1, beta * g1]
    torch.testing.assert_close(meta.logits, torch.tensor(xi))
    meta.after_update(torch.tensor([1.0, 0.9]), lambda: torch.tensor([0.8, 0.3]))
    # step 2: z = softmax(xi), delta = (log(1/0.8), log(0.9/0.3))
    delta = [math.log(1 / 0.8), math.log(0.9 / 0.3)]
    z0 = 1 / (1 + math.exp(xi[1] - xi[0]))
    z = [z0, 1 - z0]
    mean = z[0] * delta[0] + z[1] * delta[1]
    xi = [x - beta * (zt * (dt - mean) + gamma * x) for x, zt, dt in zip(xi, z, delta, strict=True)]
    torch.testing.assert_close(meta.logits, torch.tensor(xi))
    assert xi[0] > xi[1]  # task 1 improved faster, so it loses weight


def test_famo_adam_rule_equals_torch_adam_on_the_softmax_vjp():
    """The official form: ``grad = vjp(softmax, xi)(delta)``, Adam with weight_decay=gamma."""
    meta = FAMO(3, lr=0.025, weight_decay=1e-3)
    xi = torch.zeros(3, requires_grad=True)
    reference = torch.optim.Adam([xi], lr=0.025, weight_decay=1e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        before, after = torch.rand(2, 3, generator=generator) + 0.1
        delta = (before + 1e-8).log() - (after + 1e-8).log()
        (grad,) = torch.autograd.grad(torch.softmax(xi, dim=-1), xi, grad_outputs=delta)
        xi.grad = grad
        reference.step()
        meta.after_update(before, lambda after=after: after)
    torch.testing.assert_close(meta.logits, xi.detach())


def test_famo_bad_input():
    meta = FAMO(2, min_losses=1.0)
    with pytest.raises(ValueError, match="above min_losses"):
        meta(torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="losses after the update"):
        meta.after_update(torch.tensor([2.0, 2.0]), lambda: torch.tensor([2.0, float("nan")]))
    with pytest.raises(ValueError, match="min_losses"):
        FAMO(2, min_losses=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="optimizer"):
        FAMO(2, optimizer="rmsprop")
    with pytest.raises(ValueError, match="lr"):
        UncertaintyWeighting(2, lr=-1.0)


# ---------------------------------------------------------------------------- all combiners

COMBINERS = {
    "fixed": lambda variant: FixedWeights(3, [1.0, 0.5, 0.25]),
    "uncertainty": lambda variant: UncertaintyWeighting(3, init=0.3 * variant, optimizer="sgd"),
    "uncertainty_adam": lambda variant: UncertaintyWeighting(3, init=0.3 * variant),
    "dwa": lambda variant: DynamicWeightAverage(3, window=2),
    "rlw": lambda variant: RandomLossWeighting(3, seed=11 + variant),
    "famo": lambda variant: FAMO(3, optimizer="sgd", lr=0.5, weight_decay=0.1),
    "famo_adam": lambda variant: FAMO(3),
}


@pytest.mark.parametrize("name", list(COMBINERS))
def test_batched_input_and_global_rng_untouched(name):
    meta = COMBINERS[name](0)
    losses = torch.rand(4, 3) + 0.1
    torch.testing.assert_close(meta(losses), torch.stack([meta(row) for row in losses]))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    meta(losses[0])
    if hasattr(meta, "after_update"):
        meta.after_update(losses[0], lambda: losses[1])
    assert torch.equal(torch.get_rng_state(), state)
    assert meta.num_tasks == 3
    assert not any(p.requires_grad for p in meta.parameters())


class _Reference:
    """The test's own statement of each method: the weights of the step's gradient
    ``sum_t weight_t grad l_t`` and the state update from the losses before/after the step."""

    def __init__(self, name):
        self.name = name
        self.s = torch.zeros(3)  # UW, SGD lr 0.025
        self.xi = torch.zeros(3)  # FAMO, SGD lr 0.5, decay 0.1
        self.history = []  # DWA
        self.generator = torch.Generator().manual_seed(11)  # RLW
        self.rlw = torch.softmax(torch.randn(3, generator=self.generator), dim=-1)

    def weights(self, losses):
        if self.name == "fixed":
            return torch.tensor([1.0, 0.5, 0.25])
        if self.name == "uncertainty":
            return torch.exp(-self.s)
        if self.name == "dwa":
            complete = len(self.history) // 2
            means = [torch.stack(self.history[2 * k : 2 * k + 2]).mean(0) for k in range(complete)]
            if complete < 2:
                return torch.ones(3)
            return 3 * torch.softmax(means[-1] / means[-2] / 2.0, dim=-1)
        if self.name == "rlw":
            return self.rlw
        z = torch.softmax(self.xi, dim=-1)
        return (z / (losses + 1e-8)) / (z / (losses + 1e-8)).sum()

    def observe(self, before, after):
        if self.name == "uncertainty":
            self.s = self.s - 0.025 * (1 - torch.exp(-self.s) * before)
        elif self.name == "dwa":
            self.history.append(before)
        elif self.name == "rlw":
            self.rlw = torch.softmax(torch.randn(3, generator=self.generator), dim=-1)
        elif self.name == "famo":
            delta = (before + 1e-8).log() - (after + 1e-8).log()
            z = torch.softmax(self.xi, dim=-1)
            self.xi = self.xi - 0.5 * (z * (delta - (z * delta).sum()) + 0.1 * self.xi)


def _learner(model, meta, momentum=0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum)
    return meltr.MetaLearner(model, meta, mlp_source, optimizer, meta_optimizer=None)


@pytest.mark.parametrize("name", ["fixed", "uncertainty", "dwa", "rlw", "famo"])
def test_learner_updates_are_sgd_on_the_combined_loss(name):
    torch.manual_seed(0)
    model = MLP()
    reference_model = copy.deepcopy(model)
    params = list(reference_model.parameters())
    meta = COMBINERS[name](0)
    learner = _learner(model, meta)
    reference = _Reference(name)
    for step in range(7):
        batch = mlp_batch(step)
        metrics = learner.step(batch)
        losses = torch.stack(list(mlp_source(reference_model, batch).values()))
        weights = reference.weights(losses.detach())
        assert "meta/L_pri" not in metrics
        dm_dl = [metrics[f"dM/dl/{k}"] for k in ("primary", "aux_a", "aux_b")]
        torch.testing.assert_close(torch.tensor(dm_dl), weights)
        grads = torch.autograd.grad((weights * losses).sum(), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= LR * g
            after = torch.stack(list(mlp_source(reference_model, batch).values()))
        reference.observe(losses.detach(), after)
    for actual, expected in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(actual, expected)
    if name == "dwa":
        assert int(meta.windows_done) == 3 and not torch.equal(meta.weight, torch.ones(3))


@pytest.mark.parametrize("name", list(COMBINERS))
def test_state_dict_round_trip_continues_bit_exactly(name):
    batches = [mlp_batch(seed) for seed in range(7)]

    def fresh(seed, variant):
        torch.manual_seed(seed)
        model = MLP()
        return model, _learner(model, COMBINERS[name](variant), momentum=0.9)

    model, learner = fresh(0, 0)
    for batch in batches:
        learner.step(batch)

    first_model, first = fresh(0, 0)
    for batch in batches[:3]:
        first.step(batch)
    saved = io.BytesIO()
    torch.save({"model": first_model.state_dict(), "learner": first.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved)
    resumed_model, resumed = fresh(1, 1)
    resumed_model.load_state_dict(state["model"])
    resumed.load_state_dict(state["learner"])
    for batch in batches[3:]:
        resumed.step(batch)

    for actual, expected in zip(resumed_model.parameters(), model.parameters(), strict=True):
        assert torch.equal(actual, expected)
    resumed_state, expected_state = resumed.meta_loss.state_dict(), learner.meta_loss.state_dict()
    assert resumed_state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        assert torch.equal(resumed_state[key], value), key
