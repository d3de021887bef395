"""Benchmark the hypergradient solvers and products backends on CPU (prints a markdown table).

Backbone: a pre-norm transformer (4 layers, width 256, 4 heads, sequence 64, batch 8) whose
attention is ``F.scaled_dot_product_attention`` with its default kernel, and 3 task losses; the
meta loss is a MetaLossTransformer. Primary and aux batch are the same batch object.

Columns:
- ms: median wall time of one ``MetaLearner.hypergradient`` (baseline rows: their own step);
- peak MB: growth of the process's peak resident set over its resident set before the call
  (peak reset through ``/proc/self/clear_refs``, free heap returned with ``malloc_trim`` first);
  torch's CPU allocator has no peak counter and tracemalloc does not see it;
- err exact: relative error against the implicit-function hypergradient computed with autograd
  products and ConjugateGradient(maxiter=50, tol=1e-10);
- err products: relative error against the same solver with autograd products.

Baselines: "plain step" is one forward + backward + AdamW step of the backbone on the sum of its
losses; "reference recipe" is the authors' method: inverse Hessian taken as I, computed by double
backward ``d/dphi (v . grad_w M)`` with ``create_graph`` through the backbone (math kernel).
Usage: ``python tools/bench_hypergrad.py [--quick]``.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import meltr
from meltr.objective import math_attention
from meltr.solvers import ConjugateGradient, Identity, Neumann, Unrolled

WIDTH, LAYERS, HEADS, SEQ, BATCH, VOCAB = 256, 4, 4, 64, 8, 512


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.qkv, self.proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.fc1, self.fc2 = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = (
            t.reshape(b, n, HEADS, -1).transpose(1, 2)
            for t in self.qkv(self.norm1(h)).chunk(3, dim=-1)
        )
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        h = h + self.proj(attended)
        return h + self.fc2(F.gelu(self.fc1(self.norm2(h))))


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.Sequential(*[Block() for _ in range(LAYERS)])
        self.norm = nn.LayerNorm(WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB)
        self.cls_head = nn.Linear(WIDTH, 4)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(self.blocks(self.embed(ids)))
        return self.cls_head(h.mean(dim=1)), self.lm_head(h)


def loss_source(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    logits, token_logits = model(batch["ids"])
    return {
        "cls": F.cross_entropy(logits, batch["label"]),
        "mlm": F.cross_entropy(token_logits.flatten(0, 1), batch["ids"].flatten()),
        "smooth": token_logits.pow(2).mean(),
    }


def make_batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "ids": torch.randint(VOCAB, (BATCH, SEQ), generator=g),
        "label": torch.randint(4, (BATCH,), generator=g),
    }


_LIBC = ctypes.CDLL("libc.so.6")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(fn, repeats: int) -> tuple[float, float, object]:
    """(median ms, peak RSS growth in MB, last result) of ``fn()`` after one warm-up call."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(1e3 * (time.perf_counter() - start))
    del result
    _LIBC.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    result = fn()
    peak_mb = (_status_kb("VmHWM") - before) / 1024
    return statistics.median(times), peak_mb, result


def relative_error(actual, expected) -> float:
    a = torch.cat([t.reshape(-1) for t in actual]).double()
    e = torch.cat([t.reshape(-1) for t in expected]).double()
    return float((a - e).norm() / e.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and configurations")
    args = parser.parse_args()
    repeats = 2 if args.quick else 7
    torch.manual_seed(0)
    model = Backbone()
    meta = meltr.MetaLossTransformer(3)
    batch = make_batch()
    params = [p for p in model.parameters()]
    param_mb = sum(p.numel() * p.element_size() for p in params) / 2**20

    def learner(solver, products):
        return meltr.MetaLearner(
            model,
            meta,
            loss_source,
            torch.optim.AdamW(model.parameters()),
            torch.optim.Adam(meta.parameters()),
            solver=solver,
            products=products,
        )

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)

    def plain_step():
        optimizer.zero_grad(set_to_none=True)
        sum(loss_source(model, batch).values()).backward()
        optimizer.step()

    def reference_recipe():
        with math_attention():
            losses = torch.stack(list(loss_source(model, batch).values()))
            residual = meta(losses) - losses.sum()
            l_pri = losses[0] + 0.1 * residual.abs()
            v = torch.autograd.grad(l_pri, params, retain_graph=True)
            grad_w = torch.autograd.grad(meta(losses), params, create_graph=True)
            dot = sum((g * u).sum() for g, u in zip(grad_w, v, strict=True))
            phi = list(meta.parameters())
            grads = torch.autograd.grad(dot, phi, allow_unused=True, materialize_grads=True)
            return [-g for g in grads]

    rows = []
    plain_ms, plain_mb, _ = measure(plain_step, repeats)
    optimizer.zero_grad(set_to_none=True)
    ref_ms, ref_mb, _ = measure(reference_recipe, repeats)
    rows.append(("plain training step", plain_ms, plain_mb, None, None))
    rows.append(("reference recipe (double backward, H^-1 = I)", ref_ms, ref_mb, None, None))

    exact = learner(ConjugateGradient(maxiter=50, tol=1e-10), "autograd").hypergradient(
        batch, batch
    )
    solvers = [Identity(), Neumann(steps=3, alpha=0.1), ConjugateGradient(maxiter=5)]
    products_names = ["finite_difference", "forward", "autograd"]
    if args.quick:
        solvers = solvers[:1] + solvers[2:]
    for solver in solvers:
        by_products = {}
        for products in reversed(products_names):  # autograd first: the products reference
            ms, mb, grads = measure(
                lambda s=solver, p=products: learner(s, p).hypergradient(batch, batch), repeats
            )
            by_products[products] = (ms, mb, grads)
        for products in products_names:
            ms, mb, grads = by_products[products]
            rows.append(
                (
                    f"{solver!r} + {products}",
                    ms,
                    mb,
                    relative_error(grads, exact),
                    relative_error(grads, by_products["autograd"][2]),
                )
            )
    unrolled = Unrolled(steps=3, lr=1e-3, optimizer="sgd")
    ms, mb, grads = measure(
        lambda: learner(unrolled, "autograd").hypergradient(batch, batch), repeats
    )
    rows.append((f"{unrolled!r}", ms, mb, relative_error(grads, exact), None))

    print(
        f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads; backbone {LAYERS} "
        f"layers x width {WIDTH}, seq {SEQ}, batch {BATCH}, {param_mb:.1f} MB of parameters; "
        f"median of {repeats}; peak MB = peak RSS growth (see docstring)\n"
    )
    print("| method | ms | x plain | x reference | peak MB | err exact | err products |")
    print("|---|---|---|---|---|---|---|")

    def fmt(x):
        return "—" if x is None else f"{x:.1e}"

    for name, ms, mb, err_exact, err_products in rows:
        print(
            f"| {name} | {ms:.1f} | {ms / plain_ms:.2f} | {ms / ref_ms:.2f} | {mb:.1f} | "
            f"{fmt(err_exact)} | {fmt(err_products)} |"
        )
    fd = next(r for r in rows if r[0] == "Identity() + finite_difference")
    print(
        f"\nIdentity + finite_difference: {fd[1] / ref_ms:.2f}x reference recipe (target <= 0.5), "
        f"{fd[1] / plain_ms:.2f}x plain step (target <= 1.8), peak {fd[2]:.1f} MB vs plain "
        f"{plain_mb:.1f} MB + parameters {param_mb:.1f} MB (target <= {plain_mb + param_mb:.1f})"
    )


if __name__ == "__main__":
    main()
