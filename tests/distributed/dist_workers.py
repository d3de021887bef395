"""Functions each spawned rank runs (importable by spawned processes). Each writes what the test
compares into ``out_dir / f"rank{rank}.pt"``."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import torch
import torch.nn.functional as F
from dist_toy import global_batch, local_losses, local_slice, make_model

import meltr
from meltr.backbones.allinone.losses import AllInOneRetrievalLoss
from meltr.backbones.allinone.model import AllInOne
from meltr.backbones.losses import gather_across_ranks
from meltr.train import sharded
from meltr.train.distributed import (
    Distributed,
    assert_replicated,
    global_mean_losses,
    init_distributed,
    mean_over_ranks,
    reduced_loss_source,
    shutdown_distributed,
    wrap_model,
)
from meltr.train.preemption import PreemptionHandler
from meltr.train.sharded import save_sharded

LOSS_WEIGHTS = torch.tensor([1.0, 0.3], dtype=torch.float64)


def full_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient as a full tensor (zeros where unused), keyed by the unwrapped
    parameter name."""
    grads = {}
    for name, param in model.named_parameters():
        grad = torch.zeros_like(param) if param.grad is None else param.grad
        grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
        grads[name.replace("_checkpoint_wrapped_module.", "")] = grad.detach().clone()
    return grads


def contrastive_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Symmetric InfoNCE between two views of every sample, over the gathered global batch."""
    first = F.normalize(gather_across_ranks(model(batch["x"])["features"]), dim=-1)
    second = F.normalize(gather_across_ranks(model(batch["x"].flip(1))["features"]), dim=-1)
    logits = first @ second.T / 0.05
    targets = torch.arange(logits.shape[0])
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def gradient_worker(config: Distributed, out_dir: Path) -> None:
    """Reduced losses and gradients of one step, and of the gathered contrastive loss."""
    context = init_distributed(config)
    model = wrap_model(make_model(), context, config)
    batch = local_slice(global_batch(0), context.rank, context.world_size)

    losses = global_mean_losses(local_losses(model, batch))
    (torch.stack(list(losses.values())) @ LOSS_WEIGHTS).backward()
    result = {"losses": torch.stack(list(losses.values())).detach(), "grads": full_gradients(model)}

    for param in model.parameters():
        param.grad = None
    itc = contrastive_loss(model, batch)
    itc.backward()
    result |= {"itc": itc.detach(), "itc_grads": full_gradients(model)}

    meta = torch.nn.Linear(2, 1).double()
    assert_replicated(meta.parameters(), meta_step=7)
    if context.rank == 1:
        with torch.no_grad():
            meta.bias.add_(1e-12)
    try:
        assert_replicated(meta.parameters(), meta_step=7)
        result["divergence_error"] = ""
    except RuntimeError as error:
        result["divergence_error"] = str(error)
    torch.save(result, out_dir / f"rank{context.rank}.pt")
    shutdown_distributed()


def train_steps(model, optimizer, steps: range, rank: int, world_size: int) -> list[torch.Tensor]:
    """Plain data-parallel training on the reduced weighted losses; the loss vector per step."""
    history = []
    for step in steps:
        batch = local_slice(global_batch(step), rank, world_size)
        losses = torch.stack(list(global_mean_losses(local_losses(model, batch)).values()))
        optimizer.zero_grad()
        (losses @ LOSS_WEIGHTS).backward()
        optimizer.step()
        history.append(losses.detach().clone())
    return history


def checkpoint_worker(config: Distributed, out_dir: Path, save_after: int, total: int) -> None:
    """Train ``save_after`` steps, checkpoint, then train on to ``total`` steps."""
    context = init_distributed(config)
    model = wrap_model(make_model(), context, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    rank, world_size = context.rank, context.world_size
    history = train_steps(model, optimizer, range(save_after), rank, world_size)
    save_sharded(
        out_dir / "checkpoints",
        save_after,
        model,
        optimizer,
        replicated_state={"step": save_after, "meta": torch.arange(3.0)},
        rank_state={"batches": [local_slice(global_batch(save_after - 1), rank, world_size)]},
    )
    history += train_steps(model, optimizer, range(save_after, total), rank, world_size)
    torch.save({"history": history}, out_dir / f"rank{rank}.pt")
    shutdown_distributed()


def full_disk_worker(config: Distributed, out_dir: Path, full_rank: int) -> None:
    """Save a checkpoint while rank ``full_rank`` finds its disk full (the write of its own file
    raises ENOSPC); record what each rank raised, then save again with room."""
    context = init_distributed(config)
    model = wrap_model(make_model(), context, config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    train_steps(model, optimizer, range(1), context.rank, context.world_size)
    write_file = sharded._save_file

    def write_on_a_full_disk(obj, path):
        if path.name.startswith("rank-"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_file(obj, path)

    raised = None
    if context.rank == full_rank:
        sharded._save_file = write_on_a_full_disk
    try:
        save_sharded(out_dir / "checkpoints", 1, model, optimizer, {"step": 1}, {})
    except OSError as error:
        raised = {"errno": error.errno, "message": str(error)}
    sharded._save_file = write_file
    save_sharded(out_dir / "checkpoints", 2, model, optimizer, {"step": 2}, {})  # with room
    torch.save({"raised": raised}, out_dir / f"rank{context.rank}.pt")
    shutdown_distributed()


def preemption_worker(
    config: Distributed, out_dir: Path, signal_rank: int, signal_step: int
) -> None:
    """Loop until the ranks agree to stop; one rank signals itself at ``signal_step``."""
    context = init_distributed(config)
    stopped_at = None
    with PreemptionHandler() as handler:
        for step in range(signal_step + 5):
            if context.rank == signal_rank and step == signal_step:
                os.kill(os.getpid(), signal.SIGUSR1)
            if handler.stop_requested():
                stopped_at = step
                break
    torch.save({"stopped_at": stopped_at}, out_dir / f"rank{context.rank}.pt")
    shutdown_distributed()


def make_learner(model: torch.nn.Module, solver: object) -> meltr.MetaLearner:
    """A float64 MetaLearner over the toy losses; the same meta net on every rank and in the
    single-process reference."""
    torch.manual_seed(7)
    meta_loss = meltr.MetaLossTransformer(2, dim=8, heads=2, ff_dim=8, scale_hidden=8).double()
    return meltr.MetaLearner(
        model,
        meta_loss,
        reduced_loss_source(local_losses),
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        torch.optim.Adam(meta_loss.parameters(), lr=1e-2),
        solver=solver,
        meta_every=2,
        replay=3,
        reduce=mean_over_ranks,
    )


def run_learner(model: torch.nn.Module, solver: object, steps: int, rank: int, world_size: int):
    """The hypergradient at the start, then ``steps`` learner steps; phi is checked for equality
    across ranks after every meta step."""
    learner = make_learner(model, solver)
    primary = local_slice(global_batch(0), rank, world_size)
    aux = local_slice(global_batch(1), rank, world_size)
    hypergradient = [g.detach().clone() for g in learner.hypergradient(primary, aux)]
    history = []
    for step in range(steps):
        metrics = learner.step(local_slice(global_batch(step), rank, world_size))
        history.append(torch.tensor([metrics["loss/mse"], metrics["loss/norm"]]))
        if learner.step_count % learner.meta_every == 0:
            assert_replicated(learner.meta_loss.parameters(), meta_step=learner.step_count)
    phi = [p.detach().clone() for p in learner.meta_loss.parameters()]
    return {"hypergradient": hypergradient, "history": torch.stack(history), "phi": phi}


def learner_worker(config: Distributed, out_dir: Path, solver: object, steps: int) -> None:
    context = init_distributed(config)
    model = wrap_model(make_model(), context, config)
    result = run_learner(model, solver, steps, context.rank, context.world_size)
    torch.save(result, out_dir / f"rank{context.rank}.pt")
    shutdown_distributed()


def tiny_allinone() -> torch.nn.Module:
    torch.manual_seed(0)
    return AllInOne(
        vocab_size=50,
        max_text_len=8,
        num_frames=2,
        image_size=16,
        patch_size=8,
        width=32,
        depth=2,
        heads=2,
        mlp_ratio=2.0,
        proj_dim=16,
        drop_rate=0.0,
    ).double()


def allinone_batch(size: int = 8) -> dict[str, torch.Tensor]:
    """A global batch whose masked-token counts differ between its halves."""
    generator = torch.Generator().manual_seed(5)
    text_ids = torch.randint(5, 50, (size, 8), generator=generator)
    masked = torch.rand(size, 8, generator=generator) < torch.linspace(0.1, 0.6, size)[:, None]
    return {
        "video": torch.randn(size, 2, 3, 16, 16, generator=generator, dtype=torch.float64),
        "text_ids": text_ids,
        "text_mask": torch.ones_like(text_ids),
        "mlm_ids": text_ids.masked_fill(masked, 4),
        "mlm_labels": text_ids.masked_fill(~masked, -100),
    }


def allinone_worker(config: Distributed, out_dir: Path) -> None:
    """Reduced All-in-one losses (itc, mlm) of the rank's slice and the resulting gradients."""
    context = init_distributed(config)
    model = wrap_model(tiny_allinone(), context, config)
    batch = local_slice(allinone_batch(), context.rank, context.world_size)
    losses = reduced_loss_source(AllInOneRetrievalLoss(("itc", "mlm")))(model, batch)
    (torch.stack(list(losses.values())) @ LOSS_WEIGHTS).backward()
    result = {"losses": torch.stack(list(losses.values())).detach(), "grads": full_gradients(model)}
    torch.save(result, out_dir / f"rank{context.rank}.pt")
    shutdown_distributed()
