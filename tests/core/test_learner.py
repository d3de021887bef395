"""MetaLearner: update rules, baselines, bad input, state round trip, side-effect freedom."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from core_toys import MLP, mlp_batch, mlp_source
from release_loop import release_loop
from torch import nn

import meltr
from meltr.solvers import ConjugateGradient, Identity, StocBIO, Unrolled
from meltr.weighting import FixedWeights


def _meta_transformer():
    return meltr.MetaLossTransformer(3, dim=16, heads=4, ff_dim=16, scale_hidden=8)


def _learner(model=None, meta=None, **kwargs):
    model = MLP() if model is None else model
    meta = _meta_transformer() if meta is None else meta
    kwargs.setdefault("optimizer", torch.optim.SGD(model.parameters(), lr=0.1))
    kwargs.setdefault("meta_optimizer", torch.optim.SGD(meta.parameters(), lr=0.5))
    return meltr.MetaLearner(model, meta, kwargs.pop("loss_source", mlp_source), **kwargs)


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize(("init", "weights"), [([1.0, 0.0, 0.0], [1, 0, 0]), (1.0, [1, 1, 1])])
def test_fixed_linear_baselines_are_plain_sgd(init, weights):
    torch.manual_seed(0)
    model = MLP()
    reference = copy.deepcopy(model)
    meta = meltr.LinearMetaLoss(3, init=init).requires_grad_(False)
    learner = _learner(model, meta, meta_optimizer=None, meta_every=1)
    for seed in range(3):
        batch = mlp_batch(seed)
        metrics = learner.step(batch)
        losses = mlp_source(reference, batch)
        total = sum(w * loss for w, loss in zip(weights, losses.values(), strict=True))
        grads = torch.autograd.grad(total, list(reference.parameters()), allow_unused=True)
        with torch.no_grad():
            for p, g in zip(reference.parameters(), grads, strict=True):
                if g is not None:
                    p -= 0.1 * g
        assert "meta/L_pri" not in metrics
        assert [metrics[f"dM/dl/{k}"] for k in losses] == weights
    for actual, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(actual, expected)
    assert len(learner.buffer) == 0


def test_normalized_weights_step_on_dmeta_dl_over_its_mean_magnitude():
    """normalize_weights: w <- w - lr * sum_t (g_t / mean_s |g_s|) grad l_t, g = dM/dl at the
    step's losses (signs kept), with phi frozen (no meta step) and any overall scale of M."""
    torch.manual_seed(0)
    model = MLP()
    reference = copy.deepcopy(model)
    meta = meltr.LinearMetaLoss(3, init=[7.0, -3.5, 0.7]).requires_grad_(False)
    learner = _learner(model, meta, meta_optimizer=None, normalize_weights=True)
    scale = (7.0 + 3.5 + 0.7) / 3
    weights = [7.0 / scale, -3.5 / scale, 0.7 / scale]
    for seed in range(3):
        batch = mlp_batch(seed)
        metrics = learner.step(batch)
        assert [metrics[f"dM/dl/{k}"] for k in ("primary", "aux_a", "aux_b")] == pytest.approx(
            [7.0, -3.5, 0.7]
        )
        losses = mlp_source(reference, batch)
        total = sum(w * loss for w, loss in zip(weights, losses.values(), strict=True))
        grads = torch.autograd.grad(total, list(reference.parameters()), allow_unused=True)
        with torch.no_grad():
            for p, g in zip(reference.parameters(), grads, strict=True):
                if g is not None:
                    p -= 0.1 * g
    for actual, expected in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(actual, expected)


def test_meta_step_then_inner_step_on_reused_forward():
    """One step with meta_every=1, replay=0: phi <- phi - lr_meta * hypergradient(batch, batch)
    at the old w; then w <- w - lr * grad_w M(l(w); new phi). The loss source runs 3 times
    (one forward, two finite-difference forwards), not 4."""
    torch.manual_seed(0)
    calls = []

    def counting_source(model, batch):
        calls.append(1)
        return mlp_source(model, batch)

    learner = _learner(meta_every=1, replay=0, meta_grad_clip=None, loss_source=counting_source)
    model, meta = learner.model, learner.meta_loss
    batch = mlp_batch(1)
    torch.manual_seed(5)
    hyper = learner.hypergradient(batch, batch)
    assert len(calls) == 3
    expected_phi = [p - 0.5 * h for p, h in zip(_params(meta), hyper, strict=True)]
    calls.clear()
    torch.manual_seed(5)
    learner.step(batch)
    assert len(calls) == 3
    for actual, expected in zip(meta.parameters(), expected_phi, strict=True):
        torch.testing.assert_close(actual.detach(), expected)

    reference = MLP()
    torch.manual_seed(0)
    reference = MLP()  # same init as the learner's model before its step
    losses = torch.stack(list(mlp_source(reference, batch).values()))
    grads = torch.autograd.grad(meta(losses), list(reference.parameters()))
    for actual, w, g in zip(model.parameters(), reference.parameters(), grads, strict=True):
        torch.testing.assert_close(actual.detach(), w.detach() - 0.1 * g)


def test_inner_step_leaves_phi_grad_untouched():
    learner = _learner(meta_every=100)
    learner.step(mlp_batch(0))
    assert all(p.grad is None for p in learner.meta_loss.parameters())


def test_step_metrics_and_meta_schedule():
    learner = _learner(meta_every=2, replay=3)
    keys = ["primary", "aux_a", "aux_b"]
    first = learner.step(mlp_batch(0))
    second = learner.step(mlp_batch(1))
    for k in keys:
        assert f"loss/{k}" in first and f"dM/dl/{k}" in first
    assert "meta/L_pri" not in first
    for key in ("meta/L_pri", "meta/hypergrad_norm", "meta/seconds", "meta_loss"):
        assert math.isfinite(second[key])
    assert second["skipped/nonfinite_loss"] == 0.0
    assert len(learner.buffer) == 2


def test_nonfinite_loss_skips_update():
    def source(model, batch):
        losses = mlp_source(model, batch)
        if batch.get("poison"):
            losses["aux_a"] = losses["aux_a"] * float("nan")
        return losses

    learner = _learner(meta_every=1, loss_source=source)
    before = _params(learner.model)
    metrics = learner.step({**mlp_batch(0), "poison": True})
    assert metrics["skipped/nonfinite_loss"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, _params(learner.model), strict=True))
    assert len(learner.buffer) == 0
    assert learner.step(mlp_batch(1))["skipped/nonfinite_loss"] == 1.0


def test_nonfinite_hypergradient_skips_meta_update():
    learner = _learner(meta_every=1, reduce=lambda t: t * float("nan"))
    before = _params(learner.meta_loss)
    metrics = learner.step(mlp_batch(0))
    assert metrics["skipped/nonfinite_hypergrad"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, _params(learner.meta_loss), strict=True))


def test_changing_keys_raise_naming_both_lists():
    def source(model, batch):
        losses = mlp_source(model, batch)
        return {
            ("renamed" if k == "aux_b" and batch.get("rename") else k): v for k, v in losses.items()
        }

    learner = _learner()
    learner.step(mlp_batch(0))
    message = r"\['primary', 'aux_a', 'renamed'\].*\['primary', 'aux_a', 'aux_b'\]"
    learner.loss_source = source
    with pytest.raises(ValueError, match=message):
        learner.step({**mlp_batch(1), "rename": True})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"meta_every": 0}, "meta_every"),
        ({"gamma": -0.1}, "gamma"),
        ({"replay": -1}, "replay"),
        ({"products": "symbolic"}, "products 'symbolic'"),
        ({"meta_grad_clip": 0.0}, "meta_grad_clip"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _learner(**kwargs)


def test_num_tasks_mismatch_raises_on_first_step():
    learner = _learner(meta=meltr.LinearMetaLoss(2))
    with pytest.raises(ValueError, match="num_tasks=2.*3 losses"):
        learner.step(mlp_batch(0))


def _adam_learner(seed, **kwargs):
    torch.manual_seed(seed)
    model, meta = MLP(dropout=0.1), _meta_transformer()
    return _learner(
        model,
        meta,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        meta_optimizer=torch.optim.Adam(meta.parameters(), lr=1e-2),
        meta_every=2,
        replay=3,
        **kwargs,
    )


def test_state_round_trip_continues_exactly():
    batches = [mlp_batch(i) for i in range(10)]
    original = _adam_learner(0)
    for i in range(5):
        torch.manual_seed(100 + i)
        original.step(batches[i])
    saved = io.BytesIO()
    torch.save({"model": original.model.state_dict(), "learner": original.state_dict()}, saved)

    resumed = _adam_learner(1)
    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    resumed.model.load_state_dict(state["model"])
    resumed.load_state_dict(state["learner"])
    for i in range(5, 10):
        for learner in (original, resumed):
            torch.manual_seed(100 + i)
            metrics = learner.step(batches[i])
        assert metrics["skipped/nonfinite_hypergrad"] == 0.0
    for a, b in zip(original.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(original.meta_loss.parameters(), resumed.meta_loss.parameters(), strict=True):
        assert torch.equal(a, b)


def _checkpoint_format_of_0_1(learner) -> dict:
    """``MetaLearner.state_dict()`` as the learner of before the split into parts wrote it,
    written out key by key from the objects it holds (the format checkpoints on disk have)."""
    return {
        "meta_loss": learner.meta_loss.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "meta_optimizer": learner.meta_optimizer.state_dict(),
        "step_count": learner.step_count,
        "generator": learner.generator.get_state(),
        "buffer": list(learner.buffer),
        "skipped": dict(learner.skipped),
        "consecutive_skips": learner.consecutive_skips,
        "meta_steps": learner.meta_steps,
        "keys": learner.keys,
    }


@pytest.mark.parametrize("oldest", [False, True])
def test_a_checkpoint_in_the_earlier_format_continues_exactly(oldest):
    """The state dict keeps its keys and values, and one written in that format (without
    ``consecutive_skips`` and ``meta_steps``, the oldest) resumes into bit-identical training."""

    def source(model, batch):  # batch 1's losses are NaN: a skipped update on the counters
        losses = mlp_source(model, batch)
        return losses | ({"aux_a": losses["aux_a"] * float("nan")} if batch is batches[1] else {})

    batches = [mlp_batch(i) for i in range(10)]
    original = _adam_learner(0, loss_source=source)
    for i in range(5):
        torch.manual_seed(100 + i)
        original.step(batches[i])
    state = _checkpoint_format_of_0_1(original)
    _assert_same(original.state_dict(), state)
    assert state["skipped"]["nonfinite_loss"] == 1 and state["meta_steps"] == 1  # call 4
    if oldest:
        del state["consecutive_skips"], state["meta_steps"]
    saved = io.BytesIO()
    torch.save({"model": original.model.state_dict(), "learner": state}, saved)
    saved.seek(0)
    resumed = _adam_learner(1, loss_source=source)
    loaded = torch.load(saved, weights_only=False)
    resumed.model.load_state_dict(loaded["model"])
    resumed.load_state_dict(loaded["learner"])
    assert resumed.skipped == original.skipped and resumed.step_count == 5
    _assert_same(list(resumed.buffer), list(original.buffer))
    for i in range(5, 10):
        for learner in (original, resumed):
            torch.manual_seed(100 + i)
            learner.step(batches[i])
    for a, b in zip(original.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(original.meta_loss.parameters(), resumed.meta_loss.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(original.generator.get_state(), resumed.generator.get_state())
    if not oldest:
        _assert_same(original.state_dict(), resumed.state_dict())


class _NormedMLP(nn.Module):
    """An MLP with BatchNorm (buffers updated by every training-mode forward) and dropout."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.2))
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.net(x))


def _snapshot(learner):
    def tensors(module):
        return [t.detach().clone() for t in module.state_dict().values()]

    return {
        "model": tensors(learner.model),
        "grads": [p.grad.clone() for p in learner.model.parameters()],
        "meta": tensors(learner.meta_loss),
        "meta_grads": [p.grad.clone() for p in learner.meta_loss.parameters()],
        "optimizer": copy.deepcopy(learner.optimizer.state_dict()),
        "meta_optimizer": copy.deepcopy(learner.meta_optimizer.state_dict()),
        "rng": torch.get_rng_state(),
        "generator": learner.generator.get_state(),
    }


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize(
    ("solver", "products"),
    [
        (Identity(), "finite_difference"),
        (Identity(), "finite_difference_one_sided"),
        (Identity(), "task_gradients"),
        (ConjugateGradient(maxiter=3), "task_gradients"),
        (ConjugateGradient(maxiter=3), "finite_difference"),
        (ConjugateGradient(maxiter=3), "forward"),
        (StocBIO(steps=2, alpha=0.1), "finite_difference"),
        (Identity(), "autograd"),
        (Unrolled(steps=2, lr=0.1), "autograd"),
    ],
)
def test_hypergradient_changes_no_state(solver, products):
    torch.manual_seed(0)
    model, meta = _NormedMLP(), _meta_transformer()
    learner = _learner(
        model,
        meta,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        meta_optimizer=torch.optim.Adam(meta.parameters(), lr=1e-2),
        solver=solver,
        products=products,
        meta_every=1,
        replay=2,
    )
    learner.step(mlp_batch(0))
    for p in list(model.parameters()) + list(meta.parameters()):
        p.grad = torch.randn_like(p)
    before = _snapshot(learner)
    hyper = learner.hypergradient(mlp_batch(1), mlp_batch(2))
    _assert_same(before, _snapshot(learner))
    assert all(torch.isfinite(h).all() for h in hyper)
    assert [h.shape for h in hyper] == [p.shape for p in meta.parameters()]


# ---------------------------------------------------------------- non-finite values and bad input


def test_nonfinite_meta_loss_skips_update_and_counts():
    meta = meltr.LinearMetaLoss(3, init=[float("nan"), 0.0, 0.0]).requires_grad_(False)
    learner = _learner(meta=meta, meta_optimizer=None)
    before = _params(learner.model)
    metrics = learner.step(mlp_batch(0))
    assert metrics["skipped/nonfinite_meta_loss"] == 1.0
    assert learner.consecutive_skips == 1 and "M = nan" in learner.last_skip
    assert all(torch.equal(a, b) for a, b in zip(before, _params(learner.model), strict=True))


def test_nonfinite_gradient_skips_update():
    def source(model, batch):
        losses = mlp_source(model, batch)
        # finite value (0), non-finite gradient (d sqrt(x)/dx at 0 times 0 = nan)
        losses["aux_b"] = losses["aux_b"] + (next(model.parameters()) * 0).abs().sum().sqrt()
        return losses

    learner = _learner(loss_source=source, meta_optimizer=None)
    before = _params(learner.model)
    metrics = learner.step(mlp_batch(0))
    assert metrics["skipped/nonfinite_grad"] == 1.0
    assert "gradient of" in learner.last_skip
    assert all(torch.equal(a, b) for a, b in zip(before, _params(learner.model), strict=True))
    assert all(p.grad is None for p in learner.model.parameters())


def test_meta_update_that_makes_phi_nonfinite_is_undone():
    meta = _meta_transformer()
    learner = _learner(
        meta=meta, meta_optimizer=torch.optim.SGD(meta.parameters(), lr=float("inf")), meta_every=1
    )
    before = _params(meta)
    metrics = learner.step(mlp_batch(0))
    assert metrics["skipped/nonfinite_phi"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, _params(meta), strict=True))
    assert all(torch.isfinite(p).all() for p in learner.model.parameters())
    assert learner.consecutive_skips == 0  # the inner update itself was applied


def test_parameters_that_overflow_in_the_update_raise():
    class Overflowing(torch.optim.SGD):  # finite gradients, an update that overflows
        def step(self, closure=None):
            super().step(closure)
            with torch.no_grad():
                self.param_groups[0]["params"][-1].mul_(float("inf"))

    model = MLP()
    learner = _learner(model, optimizer=Overflowing(model.parameters(), lr=0.1))
    last = [n for n, _ in model.named_parameters()][-1]
    with pytest.raises(meltr.learner.NonFiniteParametersError, match=f"{last} became non-finite"):
        learner.step(mlp_batch(0))


def test_consecutive_skips_reset_by_an_applied_update():
    def source(model, batch):
        losses = mlp_source(model, batch)
        return losses | ({"aux_a": losses["aux_a"] * float("nan")} if batch.get("poison") else {})

    learner = _learner(loss_source=source)
    learner.step({**mlp_batch(0), "poison": True})
    learner.step({**mlp_batch(1), "poison": True})
    assert learner.consecutive_skips == 2
    learner.step(mlp_batch(2))
    assert learner.consecutive_skips == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"solver": meltr.solvers.Neumann}, r"instance.*Neumann\(\)"),
        ({"gamma": float("nan")}, "gamma"),
        ({"meta_every": 2.5}, "meta_every must be an integer"),
        ({"replay": 1.5}, "replay must be an integer"),
    ],
)
def test_invalid_arguments_of_the_wrong_kind(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _learner(**kwargs)


def test_loss_source_returning_floats_is_named():
    def source(model, batch):
        return {k: float(v) for k, v in mlp_source(model, batch).items()}

    with pytest.raises(ValueError, match="loss 'primary' is a float, not a tensor"):
        _learner(loss_source=source).step(mlp_batch(0))


def test_losses_without_a_graph_are_named():
    def source(model, batch):
        return {k: v.detach() for k, v in mlp_source(model, batch).items()}

    with pytest.raises(ValueError, match="depends on the model's trainable parameters"):
        _learner(loss_source=source).step(mlp_batch(0))


def test_after_update_hook_sees_the_losses_before_and_after_the_update():
    class Recording(meltr.LinearMetaLoss):
        def after_update(self, losses, recompute):
            self.seen = (losses.clone(), recompute())

    torch.manual_seed(0)
    model = MLP()
    meta = Recording(3).requires_grad_(False)
    learner = _learner(model, meta, meta_optimizer=None)
    batch = mlp_batch(0)
    before = torch.stack(list(mlp_source(model, batch).values())).detach()
    learner.step(batch)
    after = torch.stack(list(mlp_source(model, batch).values())).detach()
    torch.testing.assert_close(meta.seen[0], before)
    torch.testing.assert_close(meta.seen[1], after)
    assert not meta.seen[1].requires_grad


# ---------------------------------------------------------------- forward reuse


def _counting(calls):
    def source(model, batch):
        calls.append(torch.is_grad_enabled())
        return mlp_source(model, batch)

    return source


@pytest.mark.parametrize(
    ("products", "perturbed"), [("finite_difference", 2), ("finite_difference_one_sided", 1)]
)
@pytest.mark.parametrize("replay", [0, 1])
def test_meta_step_on_the_current_batch_reuses_its_forward(products, perturbed, replay):
    """replay=0, or a buffer holding only the current batch: the step's forward serves the
    meta step's primary and aux batch and (one-sided) the products' values at w."""
    calls = []
    learner = _learner(meta_every=1, replay=replay, products=products, loss_source=_counting(calls))
    learner.step(mlp_batch(0))
    assert calls == [True] + [False] * perturbed


def test_one_sided_hypergradient_on_one_batch_takes_one_perturbed_forward():
    calls = []
    learner = _learner(products="finite_difference_one_sided", loss_source=_counting(calls))
    batch = mlp_batch(0)
    learner.hypergradient(batch, batch)
    assert calls == [True, False]


class _CountBackward(torch.autograd.Function):
    """Identity whose backward counts its calls."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _CountBackward.calls += 1
        return grad


def test_primary_batch_backward_skips_the_auxiliary_tasks_graphs():
    """``L_pri`` needs only ``l_0`` of B_pri: the backward for v must not traverse the aux
    losses' graphs of that batch (it would, with zero gradients, through the stacked vector)."""

    def source(model, batch):
        losses = mlp_source(model, batch)
        losses["aux_a"] = _CountBackward.apply(losses["aux_a"])
        return losses

    learner = _learner(loss_source=source, gamma=0.3)
    _CountBackward.calls = 0
    learner.hypergradient(mlp_batch(1), mlp_batch(2))
    assert _CountBackward.calls == 1  # B_aux's graph only
    learner.gamma = 0.0
    _CountBackward.calls = 0
    learner.hypergradient(mlp_batch(1), mlp_batch(2))
    assert _CountBackward.calls == 0


def test_meta_loss_runs_outside_autocast():
    """Under autocast the meta network still computes in its own precision: with a backbone
    that has no autocast-eligible operation, the hypergradient is the same with and without."""

    class Elementwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.linspace(-1.0, 1.0, 6))

    def source(model, batch):
        w = model.w
        return {"primary": (w - batch).pow(2).sum(), "a": w.pow(4).mean(), "b": w.sin().sum()}

    learner = _learner(Elementwise(), loss_source=source, products="forward")
    batch = torch.linspace(0.0, 0.5, 6)
    plain = learner.hypergradient(batch, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = learner.hypergradient(batch, batch)
    for a, b in zip(plain, autocast, strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- the release's loop


@pytest.mark.parametrize("eviction", ["weighted", "oldest"])
def test_release_schedule_matches_the_release_loop(eviction):
    every, replay, steps = 3, 2, 4  # meta steps at iterations 0 and 3, one eviction before 3
    batches = [mlp_batch(10 + i, torch.float64) for i in range(steps)]
    torch.manual_seed(0)
    model, meta = MLP(dtype=torch.float64), _meta_transformer().double()
    reference_model, reference_meta = copy.deepcopy(model), copy.deepcopy(meta)
    learner = _learner(
        model,
        meta,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        meta_optimizer=torch.optim.Adam(meta.parameters(), lr=0.05),
        products="autograd",
        meta_every=every,
        replay=replay,
        schedule="release",
        eviction=eviction,
        gamma=0.3,
        direct_grad=False,
        meta_grad_clip=0.5,
        replay_seed=7,
    )
    meta_steps = [i for i in range(steps) if "meta/L_pri" in learner.step(batches[i])]
    assert meta_steps == [0, 3]
    release_loop(
        reference_model,
        reference_meta,
        batches,
        lambda model, batch: torch.stack(list(mlp_source(model, batch).values())),
        optimizer=torch.optim.SGD(reference_model.parameters(), lr=0.1),
        meta_optimizer=torch.optim.Adam(reference_meta.parameters(), lr=0.05),
        every=every,
        replay=replay,
        eviction=eviction,
        gamma=0.3,
        clip=0.5,
        seed=7,
    )
    for a, b in zip(model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(meta.parameters(), reference_meta.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert len(learner.buffer) == replay and learner.buffer[-1] is batches[-1]


def test_release_schedule_draws_exclude_the_current_batch():
    calls = []
    learner = _learner(meta_every=1, replay=3, schedule="release", loss_source=_counting(calls))
    learner.step(mlp_batch(0))
    first = len(calls)
    drawn = []
    original = learner._hypergradient
    learner._hypergradient = lambda p, a, current: (
        drawn.append((p, a, current)) or original(p, a, current)
    )
    batches = [mlp_batch(i) for i in range(1, 6)]
    for batch in batches:
        learner.step(batch)
        primary, aux, current = drawn[-1]
        assert current is None
        assert primary is not batch and aux is not batch
    assert first == 1 + 1 + 2  # step forward, then the meta step at the new weights: 1 + 2 FD


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"schedule": "paper"}, "schedule must be one of"), ({"eviction": "lru"}, "eviction")],
)
def test_invalid_schedule_and_eviction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _learner(**kwargs)


# ---------------------------------------------------------------- task-gradient products


def _double_learner(products, **kwargs):
    torch.manual_seed(0)
    model, meta = MLP(dtype=torch.float64), _meta_transformer().double()
    return _learner(
        model,
        meta,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        meta_optimizer=torch.optim.Adam(meta.parameters(), lr=0.05),
        products=products,
        gamma=0.3,
        **kwargs,
    )


@pytest.mark.parametrize("normalize_weights", [False, True])
@pytest.mark.parametrize("replay", [0, 2])
def test_task_gradient_steps_match_exact_double_backward_steps(replay, normalize_weights):
    """Training with products="task_gradients" (the inner update reusing the meta step's
    per-task gradients whenever its aux batch is the current one) follows the same weights and
    phi as training with exact double-backward products and an ordinary inner backward."""
    batches = [mlp_batch(20 + i, torch.float64) for i in range(5)]
    runs = {}
    for products in ("task_gradients", "autograd"):
        learner = _double_learner(
            products, meta_every=2, replay=replay, normalize_weights=normalize_weights
        )
        for batch in batches:
            learner.step(batch)
        runs[products] = [p.detach() for p in learner.model.parameters()]
        runs[products] += [p.detach() for p in learner.meta_loss.parameters()]
    for a, b in zip(runs["task_gradients"], runs["autograd"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _counting_identity(calls: dict, key: str):
    class Count(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            calls[key] += 1
            return grad

    return Count.apply


def test_task_gradients_take_one_backward_per_task_per_meta_step():
    """The meta step's per-task backwards give v, c and the inner update's gradient, so a
    backward passes each task's loss once per step (with central finite differences twice: for
    v and for the update)."""

    def per_step(products):
        calls = dict.fromkeys(["primary", "aux_a", "aux_b"], 0)
        marks = {key: _counting_identity(calls, key) for key in calls}

        def source(model, batch):
            return {k: marks[k](v) for k, v in mlp_source(model, batch).items()}

        learner = _learner(meta_every=1, replay=0, products=products, loss_source=source)
        learner.step(mlp_batch(0))
        calls.update(dict.fromkeys(calls, 0))
        learner.step(mlp_batch(1))
        return calls

    assert per_step("task_gradients") == {"primary": 1, "aux_a": 1, "aux_b": 1}
    assert per_step("finite_difference") == {"primary": 2, "aux_a": 2, "aux_b": 2}


def test_task_gradients_refuse_data_parallel(monkeypatch):
    learner = _learner(products="task_gradients")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    with pytest.raises(RuntimeError, match="single-process only"):
        learner.hypergradient(mlp_batch(0), mlp_batch(1))


def test_fidelity_probe_reports_the_cosine_to_a_reference_and_changes_nothing():
    def learner(**kwargs):
        torch.manual_seed(0)
        model = MLP()
        meta = _meta_transformer()
        return _learner(
            model,
            meta,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            meta_optimizer=torch.optim.SGD(meta.parameters(), lr=0.5),
            meta_every=1,
            replay=0,
            **kwargs,
        )

    probed = learner(fidelity_every=2, fidelity_solver=ConjugateGradient(maxiter=5, damping=1.0))
    plain = learner()
    expected_cosines = []
    for seed in range(4):
        batch = mlp_batch(seed)
        if seed % 2 == 1:  # the probe's meta steps: 2 and 4
            configured = plain.hypergradient(batch, batch)
            reference_learner = learner(solver=ConjugateGradient(maxiter=5, damping=1.0))
            reference_learner.model.load_state_dict(plain.model.state_dict())
            reference_learner.meta_loss.load_state_dict(plain.meta_loss.state_dict())
            reference = reference_learner.hypergradient(batch, batch)
            a = torch.cat([g.reshape(-1) for g in configured]).double()
            b = torch.cat([g.reshape(-1) for g in reference]).double()
            expected_cosines.append(float(a @ b / (a.norm() * b.norm())))
        metrics = probed.step(batch)
        plain.step(batch)
        assert ("meta/fidelity_cosine" in metrics) == (seed % 2 == 1)
        if seed % 2 == 1:
            assert metrics["meta/fidelity_cosine"] == pytest.approx(expected_cosines[-1], abs=1e-6)
    for a, b in zip(probed.model.parameters(), plain.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the probe left the training untouched
    for a, b in zip(probed.meta_loss.parameters(), plain.meta_loss.parameters(), strict=True):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- gradient aggregation


class _Heads(nn.Module):
    """A shared trunk with one head per task (used by ``_head_source``), and a parameter no
    task uses."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(5, 4)
        self.heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(3))
        self.unused = nn.Parameter(torch.ones(2))


def _head_source(model, batch):
    features = torch.tanh(model.trunk(batch["x"]))
    outputs = [head(features)[:, 0] for head in model.heads]
    return {
        "primary": ((outputs[0] - batch["y"]) ** 2).mean(),
        "aux_a": (outputs[1] ** 2).mean(),
        "aux_b": torch.nn.functional.softplus(outputs[2] - batch["y"]).mean(),
    }


def test_aggregate_combines_the_rows_on_shared_parameters_only():
    """rows r_t = dM/dl_t * grad l_t; the trunk (shared) gets aggregate(rows), each head its own
    task's row, the unused parameter no gradient; the aggregate's weights become metrics."""
    torch.manual_seed(0)
    model = _Heads()
    weights = [1.0, 0.5, 2.0]
    seen = []

    def aggregate(rows):
        seen.append(rows)
        coefficients = torch.tensor([0.2, 0.3, 0.5])
        combined = [
            sum(c * row[i] for c, row in zip(coefficients, rows, strict=True)) for i in range(2)
        ]
        return combined, coefficients

    batch = mlp_batch(0)
    losses = _head_source(model, batch)
    trunk = list(model.trunk.parameters())
    grads = [torch.autograd.grad(losses[k], trunk, retain_graph=True) for k in losses]
    heads = [
        torch.autograd.grad(losses[k], list(h.parameters()), retain_graph=True)
        for k, h in zip(losses, model.heads, strict=True)
    ]
    learner = meltr.MetaLearner(
        model,
        FixedWeights(3, weights),
        _head_source,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        aggregate=aggregate,
    )
    metrics = learner.step(batch)
    (rows,) = seen
    for t, row in enumerate(rows):  # the shared parameters: the trunk's, in the model's order
        for got, expected in zip(row, grads[t], strict=True):
            torch.testing.assert_close(got, weights[t] * expected)
    for i, p in enumerate(trunk):
        expected = sum(c * weights[t] * grads[t][i] for t, c in enumerate([0.2, 0.3, 0.5]))
        torch.testing.assert_close(p.grad, expected)
    for t, head in enumerate(model.heads):
        for p, expected in zip(head.parameters(), heads[t], strict=True):
            torch.testing.assert_close(p.grad, weights[t] * expected)
    assert model.unused.grad is None
    assert [metrics[f"aggregate/weight/{k}"] for k in losses] == pytest.approx([0.2, 0.3, 0.5])
