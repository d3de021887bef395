"""The benchmark transformer of ``tools/bench_hypergrad.py`` (and of ``tools/bench_scale.py
--models small transformer``): a pre-norm transformer whose attention is
``F.scaled_dot_product_attention`` with its default kernel, with three losses from one trunk."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TransformerSize:
    """Sizes of the benchmark transformer and its batch (``batch`` sequences of ``seq``
    tokens); the defaults are ``tools/bench_hypergrad.py``'s."""

    width: int = 256
    layers: int = 4
    heads: int = 4
    seq: int = 64
    batch: int = 8
    vocab: int = 512


SMALL = TransformerSize()


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = (
            t.reshape(b, n, self.heads, -1).transpose(1, 2)
            for t in self.qkv(self.norm1(h)).chunk(3, dim=-1)
        )
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        h = h + self.proj(attended)
        return h + self.fc2(F.gelu(self.fc1(self.norm2(h))))


class Backbone(nn.Module):
    """``forward(ids [B, L]) -> (class logits [B, 4], token logits [B, L, vocab])``."""

    def __init__(self, size: TransformerSize = SMALL) -> None:
        super().__init__()
        self.embed = nn.Embedding(size.vocab, size.width)
        self.blocks = nn.Sequential(*[Block(size.width, size.heads) for _ in range(size.layers)])
        self.norm = nn.LayerNorm(size.width)
        self.lm_head = nn.Linear(size.width, size.vocab)
        self.cls_head = nn.Linear(size.width, 4)

    def fsdp_units(self) -> list[nn.Module]:
        """The transformer blocks (the units activation checkpointing recomputes)."""
        return list(self.blocks)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(self.blocks(self.embed(ids)))
        return self.cls_head(h.mean(dim=1)), self.lm_head(h)


def loss_source(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    """``cls`` (primary: the class of the sequence), ``mlm`` (predict every token) and
    ``smooth`` (the mean square of the token logits)."""
    logits, token_logits = model(batch["ids"])
    return {
        "cls": F.cross_entropy(logits, batch["label"]),
        "mlm": F.cross_entropy(token_logits.flatten(0, 1), batch["ids"].flatten()),
        "smooth": token_logits.pow(2).mean(),
    }


def make_batch(size: TransformerSize = SMALL, seed: int = 0) -> dict:
    """Random token ids ``[batch, seq]`` and labels ``[batch]`` drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return {
        "ids": torch.randint(size.vocab, (size.batch, size.seq), generator=g),
        "label": torch.randint(4, (size.batch,), generator=g),
    }
