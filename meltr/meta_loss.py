"""Meta-loss networks: map a vector of T task losses to one scalar training loss.

Both networks accept losses of shape ``[T]`` (returning a scalar ``[]``) or ``[B, T]`` (returning
``[B]``), and both are twice differentiable in their input, which the hypergradient needs
(``d/dphi dM/dl``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

EMBEDDINGS = ("scale+task", "scale", "task")
INITS = ("sum", "paper")


def _check_losses(losses: torch.Tensor, num_tasks: int) -> None:
    if losses.dim() not in (1, 2) or losses.shape[-1] != num_tasks:
        raise ValueError(
            f"meta loss expects losses of shape [{num_tasks}] or [B, {num_tasks}], "
            f"got {tuple(losses.shape)}"
        )


class _SelfAttention(nn.Module):
    """Multi-head self-attention written as explicit ``softmax(Q K^T / sqrt(d)) V``.

    Fused attention kernels have no double-backward or forward-mode rule; with only T tokens
    the explicit form costs nothing.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, T, dim]`` -> ``[B, T, dim]``."""
        batch, tokens, dim = x.shape
        head_dim = dim // self.heads
        q, k, v = (
            t.reshape(batch, tokens, self.heads, head_dim).transpose(1, 2)
            for t in self.in_proj(x).chunk(3, dim=-1)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
        attended = self.dropout(scores.softmax(dim=-1)) @ v
        return self.out_proj(attended.transpose(1, 2).reshape(batch, tokens, dim))


class MetaLossTransformer(nn.Module):
    """The Meta Loss Transformer (MELTR).

    Each loss ``l_t`` becomes a token ``SE(l_t) + TE(t)`` (scale embedding
    ``Linear(1, scale_hidden) -> ReLU -> Linear(scale_hidden, dim)``, task embedding
    ``Embedding(num_tasks, dim)``; ``embedding`` selects either or both). The tokens go through one
    post-norm encoder layer (self-attention with ``heads`` heads, then a ReLU FFN of width
    ``ff_dim``; residual + LayerNorm after each), are mean-pooled and mapped to a scalar by a
    bias-free ``Linear(dim, 1)``: the transformer's output ``T(l; phi)``. With
    ``embedding="task"``, ``T`` does not depend on the losses at all (``dT/dl == 0``), the
    paper's ablation that cannot learn.

    ``init`` chooses where the meta loss starts:

    - ``"sum"`` (the default): ``M(l) = sum_t l_t + T(l; phi)`` with ``T``'s output head at zero,
      so M starts as the plain sum of the losses (``dM/dl_t = 1`` for every task, exactly) and
      phi learns departures from it. The bi-level update still sees the paper's architecture:
      ``dM/dl = 1 + dT/dl`` and every hypergradient term comes from ``T``; the regulariser
      ``gamma * |M - sum_t l_t|`` becomes ``gamma * |T|``.
    - ``"paper"``: ``M(l) = T(l; phi)``, the paper's and the MELTR release's meta network. It
      starts nearly flat (``dM/dl`` of order 1e-2 and of either sign).

    Linear and embedding weights are initialised from N(0, 0.02), biases at zero (and the head
    at zero under ``init="sum"``).

    The choice is state, not only configuration: the buffer ``sum_weight`` (1.0 under ``"sum"``,
    0.0 under ``"paper"``) multiplies the sum, so a loaded ``state_dict`` computes what it computed
    when it was saved, whatever ``init`` built the module. A state saved before the buffer existed
    (every such network had the paper's parameterisation) loads as ``"paper"``.
    """

    def __init__(
        self,
        num_tasks: int,
        dim: int = 128,
        heads: int = 8,
        ff_dim: int = 128,
        scale_hidden: int = 128,
        embedding: str = "scale+task",
        dropout: float = 0.0,
        init: str = "sum",
    ) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.num_tasks = num_tasks
        self.embedding = embedding
        self.register_buffer("sum_weight", torch.tensor(1.0 if init == "sum" else 0.0))
        self.scale_embedding = (
            nn.Sequential(nn.Linear(1, scale_hidden), nn.ReLU(), nn.Linear(scale_hidden, dim))
            if "scale" in embedding
            else None
        )
        self.task_embedding = nn.Embedding(num_tasks, dim) if "task" in embedding else None
        self.attention = _SelfAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, ff_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ff_dim, dim)
        )
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, 1, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if init == "sum":
            nn.init.zeros_(self.head.weight)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        """losses ``[T]`` or ``[B, T]`` -> meta loss ``[]`` or ``[B]``."""
        _check_losses(losses, self.num_tasks)
        batched = losses if losses.dim() == 2 else losses.unsqueeze(0)
        tokens = 0
        if self.scale_embedding is not None:
            tokens = self.scale_embedding(batched.unsqueeze(-1))
        if self.task_embedding is not None:
            task_tokens = self.task_embedding.weight.unsqueeze(0)
            tokens = tokens + task_tokens.expand(batched.shape[0], -1, -1)
        x = self.norm1(tokens + self.dropout(self.attention(tokens)))
        x = self.norm2(x + self.dropout(self.feed_forward(x)))
        out = self.head(x.mean(dim=1)).squeeze(-1) + self.sum_weight * batched.sum(dim=-1)
        return out if losses.dim() == 2 else out.squeeze(0)

    @property
    def init(self) -> str:
        """The parameterisation this network computes: ``"sum"`` or ``"paper"``."""
        return "sum" if bool(self.sum_weight) else "paper"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        state_dict.setdefault(prefix + "sum_weight", torch.tensor(0.0))  # saved before the buffer
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class LinearMetaLoss(nn.Module):
    """``M(l) = sum_t weight[t] * l_t`` with a learnable ``weight`` of shape ``[T]``.

    ``init`` is one float for every task or a sequence of ``num_tasks`` floats. With a frozen
    weight it expresses the baselines: ``[1, 0, ..., 0]`` single-task, all ones multi-task.
    """

    def __init__(self, num_tasks: int, init: float | Sequence[float] = 1.0) -> None:
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if isinstance(init, (int, float)):
            weight = torch.full((num_tasks,), float(init))
        else:
            weight = torch.tensor([float(x) for x in init])
            if weight.shape != (num_tasks,):
                raise ValueError(
                    f"LinearMetaLoss init has {weight.numel()} values, "
                    f"expected num_tasks={num_tasks}"
                )
        self.num_tasks = num_tasks
        self.weight = nn.Parameter(weight)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        """losses ``[T]`` or ``[B, T]`` -> meta loss ``[]`` or ``[B]``."""
        _check_losses(losses, self.num_tasks)
        return (losses * self.weight).sum(dim=-1)
