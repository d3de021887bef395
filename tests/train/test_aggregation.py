"""The gradient-aggregation baselines: the learner's inner-update gradient under
``TorchJDAggregation`` equals what torchjd's own ``backward`` / ``mtl_backward`` followed by
``jac_to_grad`` leave in ``.grad`` on the same model and batch."""

from __future__ import annotations

import copy
import json
import sys
from importlib.util import find_spec

import pytest
import torch
from torch import nn
from torchjd import aggregation
from torchjd.autojac import backward, jac_to_grad, mtl_backward

import meltr
from meltr.train.aggregation import TorchJDAggregation
from meltr.train.cli import main
from meltr.weighting import FixedWeights

# The test extra installs these solvers; where they are missing, so are the aggregators.
needs_quadprog = pytest.mark.skipif(
    find_spec("quadprog") is None, reason="needs pip install 'meltr[aggregation]'"
)
needs_cvxpy = pytest.mark.skipif(
    find_spec("cvxpy") is None, reason="needs pip install 'meltr[aggregation-solvers]'"
)
AGGREGATORS = [
    ("PCGrad", {}),
    ("IMTLG", {}),
    ("MGDA", {}),
    ("AlignedMTL", {}),
    pytest.param("UPGrad", {}, marks=needs_quadprog),
    pytest.param("CAGrad", {"c": 0.4}, marks=needs_cvxpy),
    pytest.param("NashMTL", {}, marks=needs_cvxpy),
]
TASKS = ("primary", "aux_a", "aux_b")


class Trunk(nn.Module):
    """A shared trunk; ``heads=True``: one head per task (task-specific parameters), else one
    head whose output columns are the tasks (every parameter shared)."""

    def __init__(self, heads: bool) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())
        count = len(TASKS) if heads else 1
        self.heads = nn.ModuleList(nn.Linear(8, 1 if heads else 3) for _ in range(count))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The features and one ``[B]`` output per task."""
        features = self.trunk(x)
        if len(self.heads) == 1:
            return features, list(self.heads[0](features).unbind(1))
        return features, [head(features)[:, 0] for head in self.heads]


def task_losses(outputs: list[torch.Tensor], batch: dict) -> list[torch.Tensor]:
    return [
        ((outputs[0] - batch["y"]) ** 2).mean(),
        (outputs[1] + batch["y"]).abs().mean(),  # pulls against the primary task
        torch.nn.functional.softplus(outputs[2] - batch["y"]).mean(),
    ]


def loss_source(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    return dict(zip(TASKS, task_losses(model(batch["x"])[1], batch), strict=True))


def make_batch(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(16, 5, generator=generator), "y": torch.randn(16, generator=generator)}


def learner_step(model, aggregate, weights="sum", source=loss_source):
    """One learner step; returns the gradients it applied and its metrics."""
    learner = meltr.MetaLearner(
        model,
        FixedWeights(len(TASKS), weights),
        source,
        torch.optim.SGD(model.parameters(), lr=0.1),
        None,
        aggregate=aggregate,
    )
    metrics = learner.step(make_batch(0))
    return {name: p.grad for name, p in model.named_parameters()}, metrics


def torchjd_step(model, aggregator, heads: bool, scale=(1.0, 1.0, 1.0)):
    """torchjd's own Jacobian-descent gradients and weights on the same batch."""
    features, outputs = model(make_batch(0)["x"])
    losses = [c * loss for c, loss in zip(scale, task_losses(outputs, make_batch(0)), strict=True)]
    if heads:
        shared = list(model.trunk.parameters())
        mtl_backward(losses, features=features)
    else:
        shared = list(model.parameters())
        backward(losses)
    weights = jac_to_grad(shared, aggregator)
    return {name: p.grad for name, p in model.named_parameters()}, weights


@pytest.mark.parametrize("heads", [False, True], ids=["all-shared/backward", "heads/mtl_backward"])
@pytest.mark.parametrize(("name", "options"), AGGREGATORS)
def test_the_learner_applies_torchjds_gradient(name, options, heads):
    torch.manual_seed(0)
    model = Trunk(heads)
    reference = copy.deepcopy(model)
    num_tasks = {"n_tasks": len(TASKS)} if name == "NashMTL" else {}
    expected, weights = torchjd_step(
        reference, getattr(aggregation, name)(**options, **num_tasks), heads
    )
    got, metrics = learner_step(model, TorchJDAggregation(name, options))
    assert got.keys() == expected.keys()
    for key, grad in expected.items():
        torch.testing.assert_close(got[key], grad, rtol=1e-5, atol=1e-7, msg=key)
    reported = torch.tensor([metrics[f"aggregate/weight/{task}"] for task in TASKS])
    torch.testing.assert_close(reported, weights.float(), rtol=1e-5, atol=1e-7)


def test_the_meta_losss_weights_scale_the_rows():
    torch.manual_seed(0)
    model = Trunk(heads=True)
    reference = copy.deepcopy(model)
    scale = (1.0, 0.5, 2.0)
    expected, _ = torchjd_step(reference, aggregation.MGDA(), True, scale)
    got, _ = learner_step(model, TorchJDAggregation("MGDA"), weights=list(scale))
    for key, grad in expected.items():
        torch.testing.assert_close(got[key], grad, rtol=1e-5, atol=1e-7, msg=key)


def test_nonfinite_rows_skip_the_update_without_aggregating():
    def infinite_slope(model, batch):  # finite losses, a non-finite gradient of aux_a
        losses = loss_source(model, batch)
        losses["aux_a"] = torch.sqrt(losses["aux_a"] - losses["aux_a"].detach())
        return losses

    def aggregate(rows):
        raise AssertionError("the aggregator must not see non-finite rows")

    model = Trunk(heads=False)
    before = [p.detach().clone() for p in model.parameters()]
    _, metrics = learner_step(model, aggregate, source=infinite_slope)
    assert metrics["skipped/nonfinite_grad"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("Adam", {}, "'Adam' is not an aggregator of torchjd.aggregation"),
        ("PCGrad", {"c": 0.4}, r"TorchJDAggregation.options = \{'c': 0.4\}"),
        ("MGDA", {"epsilon": -1.0}, "TorchJDAggregation.options"),
    ],
)
def test_bad_aggregator_settings_name_the_binding(name, options, match):
    with pytest.raises(ValueError, match=match):
        TorchJDAggregation(name, options)


def test_missing_torchjd_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchjd", None)
    with pytest.raises(ValueError, match=r"needs torchjd: pip install 'meltr\[aggregation\]'"):
        TorchJDAggregation("PCGrad")


def test_missing_solvers_name_the_extra(monkeypatch):
    import torchjd._mixins

    monkeypatch.setattr(torchjd._mixins, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install 'meltr\[aggregation-solvers\]'"):
        TorchJDAggregation("CAGrad", {"c": 0.4})


def test_aggregation_refuses_a_meta_optimizer():
    model, meta = Trunk(heads=True), FixedWeights(3)
    meta.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="needs meta_optimizer=None"):
        meltr.MetaLearner(
            model,
            meta,
            loss_source,
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.optim.SGD(meta.parameters(), lr=0.1),
            aggregate=TorchJDAggregation("PCGrad"),
        )


def test_a_run_with_an_aggregation_baseline_logs_the_weights(tiny_args, tmp_path):
    run = tmp_path / "run"
    args = [a for a in tiny_args(run) if not a.startswith("--MetaLossTransformer.")]
    assert main([*args, "--gin", "gin/baselines/pcgrad.gin"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "aggregate/weight/itc" in r]
    assert logged and all(r["aggregate/weight/itc"] > 0 for r in logged)
