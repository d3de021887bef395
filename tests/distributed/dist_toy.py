"""A tiny transformer (a stack of blocks) and its losses, in float64, for the distributed tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIM = 8
TOKENS = 3
INPUT = 5


class ToyBlock(nn.Module):
    """Pre-norm self-attention written out (so any kernel question is moot) plus an MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        x = x + self.proj(attention @ v)
        return x + self.mlp(self.norm2(x))


class ToyTransformer(nn.Module):
    """``forward(x [B, TOKENS, INPUT]) -> {"regression": [B], "features": [B, DIM]}``."""

    def __init__(self, blocks: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(INPUT, DIM)
        self.blocks = nn.Sequential(*[ToyBlock(DIM) for _ in range(blocks)])
        self.head = nn.Linear(DIM, 1)

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.blocks)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.blocks(self.embed(x)).mean(dim=1)
        return {"regression": self.head(pooled).squeeze(-1), "features": pooled}


def make_model(seed: int = 0) -> ToyTransformer:
    torch.manual_seed(seed)
    return ToyTransformer().double()


def global_batch(step: int, size: int = 8) -> dict[str, torch.Tensor]:
    """The global batch of ``step``: a pure function of ``step``, so any world size sees the same
    samples (rank r takes the r-th equal slice)."""
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(size, TOKENS, INPUT, generator=generator, dtype=torch.float64)
    y = torch.randn(size, generator=generator, dtype=torch.float64)
    return {"x": x, "y": y}


def local_slice(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict:
    """Rank ``rank``'s equal slice (along dim 0) of every tensor of ``batch``."""
    size = next(iter(batch.values())).shape[0] // world_size
    return {key: value[rank * size : (rank + 1) * size] for key, value in batch.items()}


def local_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-sample means over the local batch: ``mse`` (primary) and a feature-norm penalty."""
    out = model(batch["x"])
    return {
        "mse": F.mse_loss(out["regression"], batch["y"]),
        "norm": out["features"].pow(2).sum(dim=-1).mean(),
    }
