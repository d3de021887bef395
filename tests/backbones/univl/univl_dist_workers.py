"""What each spawned rank of the UniVL data-parallel test runs (importable by the spawned
processes); it writes its losses and gradients to ``out_dir / f"rank{rank}.pt"``."""

from pathlib import Path

import torch
from torch import Tensor
from univl_tiny import TINY, tiny_batch

from meltr.backbones.univl import UniVL, UniVLLoss
from meltr.train.distributed import (
    Distributed,
    init_distributed,
    reduced_loss_source,
    shutdown_distributed,
    wrap_model,
)

EXACT_TASKS = ("joint", "cmlm", "cmfm", "decoder", "m_joint", "m_decoder")
# The losses compared: EXACT_TASKS (the decoders counting [PAD] targets), then the decoder
# without them.
WEIGHTS = torch.tensor([1.0, 0.7, 0.5, 0.3, 0.2, 0.1, 0.4], dtype=torch.float64)


def exact_losses(model: torch.nn.Module, batch: dict, reduce=lambda source: source) -> Tensor:
    counted = reduce(UniVLLoss(EXACT_TASKS))(model, batch)
    uncounted = reduce(UniVLLoss(("decoder",), count_padding=False))(model, batch)
    return torch.stack([*(counted[task] for task in EXACT_TASKS), uncounted["decoder"]])


def tiny_float64_model() -> UniVL:
    torch.manual_seed(0)
    model = UniVL(**TINY).double()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def global_batch() -> dict:
    """Four items whose halves differ in masked-token and masked-frame counts."""
    batch = tiny_batch(seed=2)
    return {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}


def local_slice(batch: dict, rank: int, world_size: int) -> dict:
    size = next(iter(batch.values())).shape[0] // world_size
    return {key: value[rank * size : (rank + 1) * size] for key, value in batch.items()}


def full_gradients(model: torch.nn.Module) -> dict:
    grads = {}
    for name, parameter in model.named_parameters():
        grad = torch.zeros_like(parameter) if parameter.grad is None else parameter.grad
        grads[name] = (
            (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().clone()
        )
    return grads


def losses_worker(out_dir: Path) -> None:
    config = Distributed(strategy="fsdp")
    context = init_distributed(config)
    model = wrap_model(tiny_float64_model().eval(), context, config)
    batch = local_slice(global_batch(), context.rank, context.world_size)
    vector = exact_losses(model, batch, reduced_loss_source)
    (vector @ WEIGHTS).backward()
    align = reduced_loss_source(UniVLLoss(("align",)))(model, batch)["align"]
    result = {"losses": vector.detach(), "align": align.detach(), "grads": full_gradients(model)}
    torch.save(result, out_dir / f"rank{context.rank}.pt")
    shutdown_distributed()
