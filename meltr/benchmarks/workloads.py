"""The models ``tools/bench_scale.py`` measures, with random weights, one entry each in
``ENTRIES``, so that adding a backbone is one entry: a builder returning its model, loss source
and batches (see ``meltr.benchmarks.scale``'s docstring for the sizes)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from meltr.benchmarks import transformer
from meltr.objective import LossSource


@dataclass
class Workload:
    """A model with its loss source, the loss source of the release's primary forward, and a
    batch factory (``make_batch(seed)`` on the model's device)."""

    model: nn.Module
    loss_source: LossSource
    primary_source: LossSource
    make_batch: Callable[[int], Any]
    num_tasks: int
    description: str


@dataclass(frozen=True)
class Entry:
    build: Callable[[int | None, torch.device], Workload]
    default_batch: int


def _allinone_batch(model: nn.Module, batch_size: int, seed: int, device: torch.device) -> dict:
    """Random inputs at ``model``'s sizes, with BERT-style MLM masking (15 %, at least one)."""
    vocab = model.text_embeddings.word_embeddings.num_embeddings
    text_len, frames, size = model.max_text_len, model.num_frames, model.image_size
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (batch_size, text_len), generator=g)
    masked = torch.rand(batch_size, text_len, generator=g) < 0.15
    masked[:, 1] = True
    mask_id = 103  # bert-base-uncased [MASK]
    batch = {
        "text_ids": ids,
        "text_mask": torch.ones(batch_size, text_len, dtype=torch.long),
        "video": torch.randn(batch_size, frames, 3, size, size, generator=g),
        "mlm_ids": torch.where(masked, mask_id, ids),
        "mlm_labels": torch.where(masked, ids, -100),
    }
    return {k: v.to(device) for k, v in batch.items()}


def build_allinone(batch_size: int | None, device: torch.device) -> Workload:
    from meltr.backbones.allinone import AllInOne, AllInOneRetrievalLoss

    batch_size = batch_size or ENTRIES["allinone"].default_batch
    model = AllInOne().to(device)  # the release's sizes are the defaults
    return Workload(
        model=model,
        loss_source=AllInOneRetrievalLoss(("itc", "mlm")),
        primary_source=AllInOneRetrievalLoss(("itc",)),  # the release's primary forward
        make_batch=partial(_allinone_batch, model, batch_size, device=device),
        num_tasks=2,
        description=(
            f"All-in-one ViT-B/16 (width 768, 12 blocks), {model.num_frames} frames of "
            f"{model.image_size} px, text {model.max_text_len}, vocab 30522, batch {batch_size}; "
            "losses itc (primary), mlm"
        ),
    )


def transformer_builder(size: transformer.TransformerSize, name: str):
    """The builder of the benchmark transformer at ``size`` (its batch when none is given)."""

    def build(batch_size: int | None, device: torch.device) -> Workload:
        sized = transformer.TransformerSize(
            size.width, size.layers, size.heads, size.seq, batch_size or size.batch, size.vocab
        )
        model = transformer.Backbone(sized).to(device)

        def make_batch(seed: int) -> dict:
            return {k: v.to(device) for k, v in transformer.make_batch(sized, seed).items()}

        return Workload(
            model=model,
            loss_source=transformer.loss_source,
            primary_source=transformer.loss_source,  # Violet's release: a full forward
            make_batch=make_batch,
            num_tasks=3,
            description=(
                f"{name}: width {sized.width}, {sized.layers} layers, {sized.heads} heads, batch "
                f"{sized.batch} x {sized.seq} tokens, vocab {sized.vocab}; losses cls "
                "(primary), mlm, smooth"
            ),
        )

    return build


BERT_BASE_SIZE = transformer.TransformerSize(768, 12, 12, 240, 2, 512)

ENTRIES: dict[str, Entry] = {
    "allinone": Entry(build_allinone, 2),
    "transformer": Entry(transformer_builder(BERT_BASE_SIZE, "benchmark transformer"), 2),
    "small": Entry(transformer_builder(transformer.SMALL, "small benchmark transformer"), 8),
}


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute each of ``model.fsdp_units()`` in backward (non-reentrant checkpointing)."""
    from torch.utils.checkpoint import checkpoint

    units = getattr(model, "fsdp_units", None)
    if units is None:
        raise ValueError(f"{type(model).__name__} names no fsdp_units() to checkpoint")
    for unit in units():
        unit.forward = partial(checkpoint, unit.forward, use_reentrant=False)


def parameter_mb(model: nn.Module) -> float:
    """MiB of the model's parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
