"""Small backbones, loss sources and reference formulas shared by the core tests.

The reference hypergradient here is written independently of ``meltr``: plain double backward
through the backbone (under the math attention kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


class Quadratic(nn.Module):
    """``w`` of shape ``[dim]``; tasks ``l_t(w) = 0.5 * mean((X_t w - y_t)^2)``."""

    def __init__(self, dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def quadratic_batch(num_tasks: int, n: int, dim: int, dtype, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(num_tasks, n, dim, generator=g, dtype=dtype),
        "y": torch.randn(num_tasks, n, generator=g, dtype=dtype),
    }


def quadratic_source(model: nn.Module, batch: dict) -> dict:
    return {
        f"task{t}": 0.5 * ((model(batch["x"][t]) - batch["y"][t]) ** 2).mean()
        for t in range(batch["x"].shape[0])
    }


class MLP(nn.Module):
    def __init__(self, dropout: float = 0.0, dtype=torch.float32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(5, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 3)
        ).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp_batch(seed: int, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(6, 5, generator=g, dtype=dtype),
        "y": torch.randn(6, generator=g, dtype=dtype),
    }


def mlp_source(model: nn.Module, batch: dict) -> dict:
    out = model(batch["x"])
    return {
        "primary": ((out[:, 0] - batch["y"]) ** 2).mean(),
        "aux_a": (out[:, 1] ** 2).mean(),
        "aux_b": F.softplus(out[:, 2] - batch["y"]).mean(),
    }


class TinyTransformer(nn.Module):
    """Pre-norm blocks whose attention is ``F.scaled_dot_product_attention`` (default kernel)."""

    def __init__(self, width: int = 16, heads: int = 2, layers: int = 2, dtype=torch.float32):
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(4, width)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(
                nn.ModuleDict(
                    {
                        "norm1": nn.LayerNorm(width),
                        "qkv": nn.Linear(width, 3 * width),
                        "proj": nn.Linear(width, width),
                        "norm2": nn.LayerNorm(width),
                        "fc1": nn.Linear(width, 2 * width),
                        "fc2": nn.Linear(2 * width, width),
                    }
                )
            )
        self.head = nn.Linear(width, 3)
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        batch, tokens, width = h.shape
        for block in self.blocks:
            q, k, v = (
                t.reshape(batch, tokens, self.heads, -1).transpose(1, 2)
                for t in block["qkv"](block["norm1"](h)).chunk(3, dim=-1)
            )
            attended = F.scaled_dot_product_attention(q, k, v)
            h = h + block["proj"](attended.transpose(1, 2).reshape(batch, tokens, width))
            h = h + block["fc2"](F.gelu(block["fc1"](block["norm2"](h))))
        return self.head(h.mean(dim=1))


def transformer_batch(seed: int, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(3, 8, 4, generator=g, dtype=dtype),
        "y": torch.randn(3, generator=g, dtype=dtype),
    }


def reference_hypergradient(model, meta, source, primary, aux, gamma, direct_grad, seed):
    """Double-backward hypergradient with H^{-1} = I:
    ``direct - d/dphi [ v . grad_w M(l(w; B_aux); phi) ]``, ``v = dL_pri/dw``.

    RNG: seeded with ``seed``, then the primary batch is evaluated before the aux batch.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    phi = list(meta.parameters())
    torch.manual_seed(seed)
    with sdpa_kernel(SDPBackend.MATH):
        l_pri = torch.stack(list(source(model, primary).values()))
        l_aux = l_pri if aux is primary else torch.stack(list(source(model, aux).values()))
        residual = meta(l_aux) - l_aux.sum()
        objective = l_pri[0] + gamma * residual.abs()
        v = [g.detach() for g in torch.autograd.grad(objective, params, retain_graph=True)]
        grad_w = torch.autograd.grad(meta(l_aux), params, create_graph=True)
        implicit = torch.autograd.grad(
            sum((g * u).sum() for g, u in zip(grad_w, v, strict=True)),
            phi,
            allow_unused=True,
            materialize_grads=True,
        )
    if not direct_grad:
        return [-g for g in implicit]
    frozen = l_aux.detach()
    direct = torch.autograd.grad(gamma * (meta(frozen) - frozen.sum()).abs(), phi)
    return [d - g for d, g in zip(direct, implicit, strict=True)]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def relative_error(actual, expected) -> float:
    a, e = flat(actual).double(), flat(expected).double()
    return float((a - e).norm() / e.norm())
