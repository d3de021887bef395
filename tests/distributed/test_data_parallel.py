"""Two gloo processes with half the batch each reproduce one process with the whole batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dist_toy import global_batch, local_losses, make_model
from dist_workers import (
    LOSS_WEIGHTS,
    allinone_batch,
    allinone_worker,
    gradient_worker,
    learner_worker,
    run_learner,
    tiny_allinone,
)

from meltr.backbones.allinone.losses import AllInOneRetrievalLoss
from meltr.solvers import Identity, Neumann, StocBIO
from meltr.train.distributed import Distributed, spawn_local_ranks

TOLERANCE = dict(rtol=1e-10, atol=1e-12)


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: torch.zeros_like(param) if param.grad is None else param.grad.clone()
        for name, param in model.named_parameters()
    }


def single_process_reference() -> dict:
    """The same quantities computed independently: one model, the global batch, no collectives."""
    model = make_model()
    batch = global_batch(0)
    losses = torch.stack(list(local_losses(model, batch).values()))
    (losses @ LOSS_WEIGHTS).backward()
    grads = gradients(model)
    model.zero_grad()
    first = F.normalize(model(batch["x"])["features"], dim=-1)
    second = F.normalize(model(batch["x"].flip(1))["features"], dim=-1)
    logits = first @ second.T / 0.05
    targets = torch.arange(logits.shape[0])
    itc = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
    itc.backward()
    itc_grads = gradients(model)
    return {"losses": losses.detach(), "grads": grads, "itc": itc.detach(), "itc_grads": itc_grads}


@pytest.mark.parametrize(
    "config",
    [
        Distributed(strategy="fsdp", activation_checkpointing=True),
        Distributed(strategy="replicate"),
    ],
    ids=["fsdp+checkpointing", "replicate"],
)
def test_two_ranks_match_one_process_with_the_global_batch(config, tmp_path):
    spawn_local_ranks(gradient_worker, 2, config, tmp_path)
    expected = single_process_reference()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["losses"], expected["losses"], **TOLERANCE)
        torch.testing.assert_close(got["itc"], expected["itc"], **TOLERANCE)
        assert got["grads"].keys() == expected["grads"].keys()
        for name, grad in expected["grads"].items():
            torch.testing.assert_close(got["grads"][name], grad, **TOLERANCE, msg=name)
            torch.testing.assert_close(
                got["itc_grads"][name], expected["itc_grads"][name], **TOLERANCE, msg=name
            )
        assert "after meta step 7" in got["divergence_error"]


@pytest.mark.parametrize(
    ("config", "solver"),
    [
        (Distributed(strategy="fsdp"), Neumann(steps=1, alpha=0.5)),
        (Distributed(strategy="replicate"), Identity()),
        (Distributed(strategy="replicate"), StocBIO(steps=2, alpha=0.5)),
    ],
    ids=["fsdp+neumann", "replicate+identity", "replicate+stocbio"],
)
def test_meta_learning_on_two_ranks_matches_one_process(config, solver, tmp_path):
    steps = 4  # meta steps at 2 and 4
    spawn_local_ranks(learner_worker, 2, config, tmp_path, solver, steps)
    expected = run_learner(make_model(), solver, steps, rank=0, world_size=1)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for got in ranks:
        torch.testing.assert_close(got["history"], expected["history"], rtol=1e-8, atol=1e-10)
        for mine, theirs in zip(got["hypergradient"], expected["hypergradient"], strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-9)
        for mine, theirs in zip(got["phi"], expected["phi"], strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=1e-9)
    for mine, theirs in zip(ranks[0]["phi"], ranks[1]["phi"], strict=True):
        assert torch.equal(mine, theirs)


def test_allinone_losses_on_two_ranks_match_one_process(tmp_path):
    """itc over gathered features and mlm over the global masked-token count: the mean over
    ranks of the losses and of the gradients equals the single-process values (the two halves of
    the batch have different numbers of masked tokens)."""
    spawn_local_ranks(allinone_worker, 2, Distributed(strategy="fsdp"), tmp_path)
    model = tiny_allinone()
    losses = AllInOneRetrievalLoss(("itc", "mlm"))(model, allinone_batch())
    vector = torch.stack(list(losses.values()))
    (vector @ LOSS_WEIGHTS).backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["losses"], vector.detach(), **TOLERANCE)
        for name, grad in gradients(model).items():
            torch.testing.assert_close(got["grads"][name], grad, **TOLERANCE, msg=name)
