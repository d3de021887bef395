"""Sharded checkpoints: saved by two ranks, resumed by one; atomic saves; export; preemption."""

from __future__ import annotations

import errno
import importlib.util
import signal
from pathlib import Path

import pytest
import torch
from dist_toy import global_batch, local_slice, make_model
from dist_workers import checkpoint_worker, full_disk_worker, preemption_worker, train_steps

from meltr.solvers import ConjugateGradient, Identity, Neumann, StocBIO, Unrolled
from meltr.train.distributed import Distributed, check_meta_learning_supported, spawn_local_ranks
from meltr.train.preemption import PreemptionHandler
from meltr.train.sharded import (
    latest_sharded,
    load_sharded,
    reslice_batches,
    save_sharded,
)

REPO = Path(__file__).resolve().parents[2]
SAVE_AFTER, TOTAL = 3, 5


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fresh_model_and_optimizer():
    model = make_model(seed=123)  # different weights: the checkpoint must overwrite them all
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


def test_fsdp_checkpoint_of_two_ranks_resumes_in_one_process(tmp_path):
    spawn_local_ranks(
        checkpoint_worker, 2, Distributed(strategy="fsdp"), tmp_path, SAVE_AFTER, TOTAL
    )
    two_ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close(two_ranks[0]["history"], two_ranks[1]["history"], rtol=0, atol=0)

    uninterrupted = make_model()
    optimizer = torch.optim.AdamW(uninterrupted.parameters(), lr=1e-2, weight_decay=0.1)
    reference = train_steps(uninterrupted, optimizer, range(TOTAL), 0, 1)
    torch.testing.assert_close(two_ranks[0]["history"], reference, rtol=1e-10, atol=1e-12)

    checkpoint = latest_sharded(tmp_path / "checkpoints")
    assert checkpoint is not None and checkpoint.name == f"step-{SAVE_AFTER:08d}"
    model, optimizer = fresh_model_and_optimizer()
    loaded = load_sharded(checkpoint, model, optimizer)
    assert loaded.step == SAVE_AFTER and loaded.saved_world_size == 2
    torch.testing.assert_close(loaded.replicated_state["meta"], torch.arange(3.0))
    batches = [state["batches"] for state in loaded.rank_states]
    (whole,) = reslice_batches(batches, rank=0, world_size=1)
    torch.testing.assert_close(whole, global_batch(SAVE_AFTER - 1))
    (second_half,) = reslice_batches(batches, rank=1, world_size=2)
    torch.testing.assert_close(second_half, local_slice(global_batch(SAVE_AFTER - 1), 1, 2))

    resumed = train_steps(model, optimizer, range(SAVE_AFTER, TOTAL), 0, 1)
    torch.testing.assert_close(resumed, reference[SAVE_AFTER:], rtol=1e-10, atol=1e-12)

    export = load_tool("export_checkpoint")
    export.export_checkpoint(tmp_path / "checkpoints", tmp_path / "model.pt")
    exported = torch.load(tmp_path / "model.pt", weights_only=True)
    expected = make_model(seed=123)
    fresh_optimizer = torch.optim.AdamW(expected.parameters(), lr=1e-2)
    load_sharded(checkpoint, expected, fresh_optimizer)
    assert exported.keys() == expected.state_dict().keys()
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(exported[name], value, rtol=0, atol=0, msg=name)


def test_interrupted_save_keeps_the_last_good_checkpoint(tmp_path):
    model, optimizer = fresh_model_and_optimizer()
    train_steps(model, optimizer, range(1), 0, 1)
    first = save_sharded(tmp_path, 1, model, optimizer, {"step": 1}, {})
    # A crash mid-save leaves a staging directory without info.json; a rerun must ignore it.
    crashed = tmp_path / ".step-00000002.tmp"
    (crashed / "model").mkdir(parents=True)
    assert latest_sharded(tmp_path) == first
    (tmp_path / "latest").unlink()
    assert latest_sharded(tmp_path) == first
    for step in (2, 3, 4):
        save_sharded(tmp_path, step, model, optimizer, {"step": step}, {}, keep=2)
    assert not crashed.exists()
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000003", "step-00000004"]
    assert latest_sharded(tmp_path).name == "step-00000004"
    with pytest.raises(FileNotFoundError, match="info.json"):
        load_sharded(crashed, model, optimizer)


def test_a_full_disk_on_one_rank_fails_the_save_on_every_rank_and_the_next_save_works(tmp_path):
    spawn_local_ranks(full_disk_worker, 2, Distributed(strategy="fsdp"), tmp_path, 1)
    raised = [torch.load(tmp_path / f"rank{r}.pt")["raised"] for r in range(2)]
    assert [error["errno"] for error in raised] == [errno.ENOSPC, errno.ENOSPC]
    assert "on another rank" in raised[0]["message"]  # rank 0's disk had room; rank 1's not
    assert "No space left on device" in raised[1]["message"]
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000002"]
    assert not list(checkpoints.glob(".step-*.tmp"))  # the failed save's staging was removed


def test_ranks_agree_to_stop_at_the_step_one_of_them_was_signalled(tmp_path):
    spawn_local_ranks(preemption_worker, 2, Distributed(strategy="replicate"), tmp_path, 1, 2)
    stops = [torch.load(tmp_path / f"rank{r}.pt")["stopped_at"] for r in range(2)]
    assert stops == [2, 2]


def test_preemption_handler_restores_the_previous_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionHandler() as handler:
        assert not handler.stop_requested()
        signal.raise_signal(signal.SIGTERM)
        assert handler.received == signal.SIGTERM and handler.stop_requested()
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    ("products", "solver"),
    [("autograd", Identity()), ("forward", Neumann()), ("finite_difference", Unrolled())],
)
def test_distributed_refuses_backbone_double_backward(products, solver):
    with pytest.raises(ValueError) as error:
        check_meta_learning_supported("fsdp", products, solver)
    message = str(error.value)
    assert f"products={products!r}" in message and type(solver).__name__ in message
    assert "with solver Identity, Neumann, ConjugateGradient or StocBIO" in message


def test_distributed_accepts_finite_differences_and_implicit_solvers():
    for solver in (Identity(), Neumann(), ConjugateGradient(), StocBIO()):
        check_meta_learning_supported("replicate", "finite_difference", solver)
    check_meta_learning_supported("none", "autograd", Unrolled())


def test_distributed_refuses_gradient_aggregation():
    with pytest.raises(ValueError, match="'fsdp' cannot run MetaLearner.aggregate = 'a'"):
        check_meta_learning_supported("fsdp", "finite_difference", Identity(), aggregate="a")
    check_meta_learning_supported("none", "finite_difference", Identity(), aggregate="a")
