"""The contract every backbone package keeps (docs/ARCHITECTURE.md, "Backbones"), checked on each
package found under ``meltr/backbones/`` at the test size its ``contract.py`` describes
(``tiny() -> meltr.backbones.contract.TinyBackbone``). A new backbone folder is picked up here
without editing this file, and fails with a message saying what to add until it has its
``contract.py``.

Per backbone: the loss source (keys = its ``tasks``, primary first, the same keys on another
batch, finite scalars with a graph, the same values under the same global RNG state); one
``MetaLearner`` step with a meta step (nothing skipped; every weight with a gradient and phi
move); ``fsdp_units()`` (distinct submodules of the model); the checkpoint loader on the model's
own weights written to a file (every tensor loaded and equal to the original, nothing missing or
unexpected)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import meltr
import meltr.backbones
from meltr.backbones.contract import TinyBackbone

BACKBONES = sorted(
    info.name for info in pkgutil.iter_modules(meltr.backbones.__path__) if info.ispkg
)


def tiny_backbone(name: str) -> TinyBackbone:
    """``meltr.backbones.<name>.contract.tiny()``; a test failure saying what to add when the
    package lacks it."""
    module_name = f"meltr.backbones.{name}.contract"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        pytest.fail(
            f"meltr/backbones/{name}/ has no contract.py: add one with `def tiny() -> "
            "TinyBackbone` describing the backbone at test size (see meltr/backbones/contract.py)"
        )
    tiny = getattr(module, "tiny", None)
    if not callable(tiny):
        pytest.fail(f"{module_name} defines no tiny() -> TinyBackbone")
    described = tiny()
    assert isinstance(described, TinyBackbone), f"{module_name}.tiny() returned {described!r}"
    return described


def built(backbone: TinyBackbone, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = backbone.build()
    assert isinstance(model, torch.nn.Module)
    return model.train()


def test_every_backbone_package_is_found():
    assert {"allinone", "alpro", "bert", "resnet", "univl", "violet"} <= set(BACKBONES)


@pytest.mark.parametrize("name", BACKBONES)
def test_loss_source(name):
    backbone = tiny_backbone(name)
    model, source = built(backbone), backbone.loss_source
    tasks = list(getattr(source, "tasks", ()))
    assert tasks and len(set(tasks)) == len(tasks), f"tasks {tasks}: non-empty and distinct"
    batch = backbone.batch(torch.Generator().manual_seed(1))
    torch.manual_seed(7)
    losses = source(model, batch)
    torch.manual_seed(7)
    again = source(model, batch)
    assert list(losses) == tasks, "the keys are the tasks, primary first"
    for task, value in losses.items():
        assert value.shape == () and value.is_floating_point(), f"{task}: {value!r}"
        assert torch.isfinite(value), f"{task} = {value}"
        assert value.requires_grad, f"{task} has no graph to the model's weights"
        assert torch.equal(value, again[task]), f"{task} differs under the same RNG state"
    other = source(model, backbone.batch(torch.Generator().manual_seed(2)))
    assert list(other) == tasks


@pytest.mark.parametrize("name", BACKBONES)
def test_one_meta_learner_step(name):
    backbone = tiny_backbone(name)
    model = built(backbone)
    meta_loss = meltr.MetaLossTransformer(
        len(backbone.loss_source.tasks), dim=8, heads=2, ff_dim=8, scale_hidden=8
    )
    learner = meltr.MetaLearner(
        model,
        meta_loss,
        backbone.loss_source,
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        torch.optim.Adam(meta_loss.parameters(), lr=1e-3),
        meta_every=1,
    )
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    phi = [p.detach().clone() for p in meta_loss.parameters()]
    metrics = learner.step(backbone.batch(torch.Generator().manual_seed(1)))
    assert "meta/L_pri" in metrics, "meta_every=1: the first step has a meta step"
    skipped = {k: v for k, v in metrics.items() if k.startswith("skipped/") and v}
    assert not skipped, skipped
    trained = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()]
    assert trained, "no weight received a gradient"
    unchanged = [n for n in trained if torch.equal(weights[n], model.get_parameter(n))]
    assert not unchanged, f"weights with a gradient that did not move: {unchanged}"
    assert any(not torch.equal(a, b) for a, b in zip(phi, meta_loss.parameters(), strict=True))


@pytest.mark.parametrize("name", BACKBONES)
def test_fsdp_units_are_distinct_submodules(name):
    model = built(tiny_backbone(name))
    units = model.fsdp_units()
    assert isinstance(units, list) and units, "fsdp_units() names at least one module"
    submodules = {id(module) for module in model.modules() if module is not model}
    assert all(isinstance(unit, torch.nn.Module) and id(unit) in submodules for unit in units)
    assert len({id(unit) for unit in units}) == len(units), "a unit is named twice"


@pytest.mark.parametrize("name", BACKBONES)
def test_checkpoint_loader_reads_the_models_own_weights(name, tmp_path):
    backbone = tiny_backbone(name)
    if backbone.checkpoint_loader is None:
        pytest.skip(f"{name} has no checkpoint loader (Recipe.checkpoint_loader is optional)")
    original = built(backbone, seed=0)
    path = backbone.write_checkpoint(original, tmp_path)
    fresh = built(backbone, seed=1)
    expected, before = original.state_dict(), fresh.state_dict()
    assert any(not torch.equal(expected[k], before[k]) for k in expected), "seeds give one model"
    report = backbone.checkpoint_loader(fresh, path)
    assert report.loaded, report.summary()
    assert report.missing == [] and report.unexpected == [], report.summary()
    loaded = fresh.state_dict()
    assert loaded.keys() == expected.keys()
    differing = [k for k in expected if not torch.equal(expected[k], loaded[k])]
    assert not differing, f"not restored by {report.summary()}: {differing}"
