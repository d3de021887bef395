"""Benchmark the hypergradient solvers and products backends on CPU (prints a markdown table).

Backbone: a pre-norm transformer (4 layers, width 256, 4 heads, sequence 64, batch 8) whose
attention is ``F.scaled_dot_product_attention`` with its default kernel, and 3 task losses; the
meta loss is a MetaLossTransformer, gamma = 0.1, ``direct_grad=True``. Primary and aux batch are
the same batch object. Every optimizer has learning rate 0, so no row changes w or phi and all
rows see the same problem (the optimizers still do all their arithmetic).

Timing (``min ms``, ``median ms``): every method is called once first (optimizer state creation,
first-call overheads), then the methods run round-robin, the order rotated each round, with the
Python garbage collector paused inside the timed region; min and median over the rounds. Ratios
use the minima of the two baselines from the same run. ``torch.set_num_threads`` is fixed
(``--threads``, default 1: the machine is shared, one thread per process is the least disturbed).

Memory (``peak MB``): the highest total size of tensors allocated during one call and still alive,
from the profiler's CPU allocator events (``profile_memory=True``) in a separate, untimed call.
Tensors that existed before the call (w, optimizer state) are not counted; every call starts
with ``.grad`` unset, outside the profiled region (a free reported inside it would offset the
peak). Resident-set figures are not used: glibc keeps freed heap memory, so they
mix allocator caching into the peak.

Errors: the implicit hypergradient is only well posed where ``H = d^2 M(l(w)) / dw^2`` is
invertible; at a random network H is indefinite. The benchmark therefore damps it:
``lambda = 2 * rho`` (3 significant digits), with rho the spectral radius of H estimated by 10
power iterations, so ``H + lambda I`` is positive definite. Neumann and ConjugateGradient
solve the damped system (Neumann with ``alpha = 1 / (rho + lambda)``, below
``2 / lambda_max(H + lambda I)`` even if rho is underestimated by half). The exact reference,
computed independently of ``meltr``, runs in float64: ``q* = (H + lambda I)^-1 v`` by conjugate
gradient on double-backward HVPs to a relative residual of 1e-10 (stopping with an error if it
meets non-positive curvature), then ``gamma d|M - sum l|/dphi - d/dphi (q* . grad_w M)`` by
double backward. Columns: ``err exact`` = relative error against it, ``cos exact`` = cosine
similarity with it (Identity can at best have the right direction: it ignores H),
``err products`` = relative error against the same solver with exact autograd products.
Unrolled (ITD) and the reference recipe (no direct term) estimate other quantities; their
errors are shown for scale only.

Baselines: "plain training step" = forward + backward + AdamW step of the backbone on the sum of
its losses; "reference recipe" = the authors' method (mlvlab/MELTR, e.g. violet/main_retrieval.py:
the primary loss and the training losses come from two separate forwards even when the batch is
the same; inverse Hessian taken as I; ``d/dphi (v . grad_w M)`` by double backward with
``create_graph`` through the backbone, math kernel; direct term dropped), and the same with one
shared forward; "floor" = what Identity + finite_difference cannot go below: one forward +
backward (for v) and two no-grad forwards. Identity also runs with the one-sided
finite-difference JVP and with ``task_gradients`` (exact ``c`` from one backward per task; the
three losses here share the whole trunk, so that is three backwards). The ``MetaLearner.step``
rows compare one training step with a meta step (Identity, replay=0, meta_every=1; with
``task_gradients`` the inner update reuses the meta step's per-task gradients) against a
training step of a fixed LinearMetaLoss learner without meta optimizer.

Usage: ``python tools/bench_hypergrad.py [--quick] [--threads N] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

import meltr
from meltr.objective import math_attention
from meltr.solvers import ConjugateGradient, Identity, ImplicitSolver, Neumann, Unrolled

GAMMA = 0.1
POWER_ITERATIONS = 10
DAMPING_OVER_RADIUS = 2.0
REFERENCE_TOL, REFERENCE_MAXITER = 1e-10, 200
PLAIN = "plain training step"
REFERENCE = "reference recipe (authors': 2 forwards, double backward, H^-1 = I)"

Vector = list[torch.Tensor]
IDENTITY_ONLY_PRODUCTS = ["finite_difference_one_sided", "task_gradients"]


@dataclass(frozen=True)
class TransformerSize:
    """Sizes of the benchmark transformer and its batch (``batch`` sequences of ``seq``
    tokens); the defaults are this benchmark's."""

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
    logits, token_logits = model(batch["ids"])
    return {
        "cls": F.cross_entropy(logits, batch["label"]),
        "mlm": F.cross_entropy(token_logits.flatten(0, 1), batch["ids"].flatten()),
        "smooth": token_logits.pow(2).mean(),
    }


def make_batch(size: TransformerSize = SMALL, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "ids": torch.randint(size.vocab, (size.batch, size.seq), generator=g),
        "label": torch.randint(4, (size.batch,), generator=g),
    }


# ---------------------------------------------------------------------- measurement


def time_round_robin(
    methods: dict[str, Callable[[], object]], repeats: int, reset: Callable[[], None]
) -> dict[str, list[float]]:
    """Milliseconds of each method over ``repeats`` rounds, after one warm-up call each; each
    round calls every method once, starting one method later than the previous round.
    ``reset()`` runs before every call, outside the timed region."""
    for fn in methods.values():
        reset()
        fn()
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            reset()
            gc.collect()
            gc.disable()
            start = time.perf_counter()
            methods[name]()
            times[name].append(1e3 * (time.perf_counter() - start))
            gc.enable()
    return times


def peak_allocated_mb(fn: Callable[[], object]) -> float:
    """Peak total size (MiB) of the tensors allocated by ``fn()`` and alive at the same time,
    from the profiler's CPU allocator events.

    Frees of tensors allocated before any profiling are not reported, but frees of tensors
    allocated inside an earlier profiled region are (they would lower this call's peak): free
    those, e.g. ``.grad`` left by the previous measured call, before calling this."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    if not events:
        raise RuntimeError("the profiler reported no CPU memory events (profile_memory=True)")
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak / 2**20


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]).double()


def relative_error(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    a, e = flat(actual), flat(expected)
    return float((a - e).norm() / e.norm())


def cosine(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    return float(F.cosine_similarity(flat(actual), flat(expected), dim=0))


# ---------------------------------------------------------------------- exact reference


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def _norm(a: Sequence[torch.Tensor]) -> float:
    return float(_dot(a, a).sqrt())


def spectral_radius(hvp: Callable[[Vector], Vector], like: Vector, iterations: int) -> float:
    """Power-iteration estimate of max |eigenvalue| of the symmetric operator ``hvp``
    (an underestimate that tightens with ``iterations``)."""
    g = torch.Generator().manual_seed(1)
    x = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in like]
    radius = 0.0
    for _ in range(iterations):
        scale = _norm(x)
        x = [t / scale for t in x]
        x = hvp(x)
        radius = _norm(x)
    return radius


def conjugate_gradient(
    matvec: Callable[[Vector], Vector], b: Vector, tol: float, maxiter: int
) -> tuple[Vector, int, float]:
    """Solve ``A x = b`` for symmetric positive definite A: (x, iterations, relative residual).
    RuntimeError on non-positive curvature ``p . A p <= 0`` (A not positive definite)."""
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rr, b_norm = float(_dot(r, r)), _norm(b)
    for iteration in range(1, maxiter + 1):
        ap = matvec(p)
        curvature = float(_dot(p, ap))
        if curvature <= 0:
            raise RuntimeError(
                f"reference CG met curvature {curvature:.3e} <= 0 at iteration {iteration}: "
                "H + lambda I is not positive definite; raise DAMPING_OVER_RADIUS"
            )
        step = rr / curvature
        x = [xi + step * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - step * api for ri, api in zip(r, ap, strict=True)]
        rr_new = float(_dot(r, r))
        if rr_new**0.5 <= tol * b_norm:
            return x, iteration, rr_new**0.5 / b_norm
        p = [ri + (rr_new / rr) * pi for ri, pi in zip(r, p, strict=True)]
        rr = rr_new
    raise RuntimeError(f"reference CG did not reach tol {tol} in {maxiter} iterations")


@dataclass
class Reference:
    hypergradient: Vector
    radius: float
    damping: float
    cg_iterations: int
    cg_residual: float


def exact_reference(model: nn.Module, meta: nn.Module, batch: dict) -> Reference:
    """The damped implicit hypergradient in float64 by double backward (see module docstring)."""
    model64, meta64 = copy.deepcopy(model).double(), copy.deepcopy(meta).double()
    params = [p for p in model64.parameters() if p.requires_grad]
    phi = list(meta64.parameters())
    with math_attention():
        losses = torch.stack(list(loss_source(model64, batch).values()))
        meta_value = meta64(losses)
        residual = meta_value - losses.sum()
        v = torch.autograd.grad(losses[0] + GAMMA * residual.abs(), params, retain_graph=True)
        grad_w = torch.autograd.grad(meta_value, params, create_graph=True)

        def hvp(x: Vector) -> Vector:
            return list(torch.autograd.grad(_dot(grad_w, x), params, retain_graph=True))

        radius = spectral_radius(hvp, params, POWER_ITERATIONS)
        damping = float(f"{DAMPING_OVER_RADIUS * radius:.3g}")
        q, iterations, final_residual = conjugate_gradient(
            lambda x: [h + damping * t for h, t in zip(hvp(x), x, strict=True)],
            list(v),
            REFERENCE_TOL,
            REFERENCE_MAXITER,
        )
        objective = GAMMA * residual.abs() - _dot(grad_w, q)
        grads = torch.autograd.grad(objective, phi, allow_unused=True, materialize_grads=True)
    return Reference(list(grads), radius, damping, iterations, final_residual)


class Damped(ImplicitSolver):
    """An implicit solver applied to ``H + damping I`` instead of H."""

    def __init__(self, solver: Neumann, damping: float) -> None:
        self.solver = solver
        self.damping = damping

    def solve(
        self, hvp: Callable[[Vector], Vector], v: Sequence[torch.Tensor], sample_hvp=None
    ) -> Vector:
        return self.solver.solve(
            lambda x: [h + self.damping * t for h, t in zip(hvp(x), x, strict=True)], v
        )

    def __repr__(self) -> str:
        return f"{self.solver!r} on H + {self.damping:.3g} I"


# ---------------------------------------------------------------------- benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and configurations")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (5; quick 2)")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    if args.threads < 1 or repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Backbone()
    meta = meltr.MetaLossTransformer(3)
    batch = make_batch()
    params = list(model.parameters())
    param_mb = sum(p.numel() * p.element_size() for p in params) / 2**20

    reference = exact_reference(model, meta, batch)
    damping = reference.damping
    solvers = [
        Identity(),
        Damped(Neumann(steps=3, alpha=1.0 / (reference.radius + damping)), damping),
        ConjugateGradient(maxiter=5, damping=damping),
    ]
    products_names = ["finite_difference", "forward", "autograd"]
    if args.quick:
        solvers, products_names = [solvers[0], solvers[2]], ["finite_difference", "autograd"]

    def learner(solver, products: str = "finite_difference", **kwargs) -> meltr.MetaLearner:
        return meltr.MetaLearner(
            model,
            kwargs.pop("meta_loss", meta),
            loss_source,
            torch.optim.AdamW(model.parameters(), lr=0.0),
            kwargs.pop("meta_optimizer", torch.optim.Adam(meta.parameters(), lr=0.0)),
            solver=solver,
            products=products,
            gamma=GAMMA,
            **kwargs,
        )

    def reset_grads() -> None:
        """Unset every ``.grad`` so each call starts like the first."""
        for p in params:
            p.grad = None

    plain_optimizer = torch.optim.AdamW(params, lr=0.0)

    def plain_step() -> None:
        sum(loss_source(model, batch).values()).backward()
        plain_optimizer.step()

    def reference_recipe(shared_forward: bool) -> Vector:
        with math_attention():
            aux_losses = torch.stack(list(loss_source(model, batch).values()))
            primary_losses = (
                aux_losses
                if shared_forward
                else torch.stack(list(loss_source(model, batch).values()))
            )
            meta_aux = meta(aux_losses)
            l_pri = primary_losses[0] + GAMMA * (meta_aux - aux_losses.sum()).abs()
            v = torch.autograd.grad(l_pri, params, retain_graph=True)
            grad_w = torch.autograd.grad(meta_aux, params, create_graph=True)
            grads = torch.autograd.grad(
                _dot(grad_w, v), list(meta.parameters()), materialize_grads=True
            )
            return [-g for g in grads]

    def floor() -> None:
        losses = torch.stack(list(loss_source(model, batch).values()))
        torch.autograd.grad(losses.sum(), params)
        with torch.no_grad():
            for _ in range(2):
                loss_source(model, batch)

    methods: dict[str, Callable[[], object]] = {
        PLAIN: plain_step,
        REFERENCE: lambda: reference_recipe(shared_forward=False),
        "reference recipe, one shared forward": lambda: reference_recipe(shared_forward=True),
        "floor: forward + backward + 2 no-grad forwards": floor,
    }
    for solver in solvers:
        extra = IDENTITY_ONLY_PRODUCTS if isinstance(solver, Identity) else []
        for products in products_names + extra:
            hyper = learner(solver, products)
            methods[f"{solver!r} + {products}"] = lambda h=hyper: h.hypergradient(batch, batch)
    if not args.quick:
        unrolled = learner(Unrolled(steps=3, lr=1e-3, optimizer="sgd"))
        methods[repr(unrolled.solver)] = lambda: unrolled.hypergradient(batch, batch)
    for products in ["finite_difference", *IDENTITY_ONLY_PRODUCTS]:
        meta_step = learner(Identity(), products, replay=0, meta_every=1)
        name = f"MetaLearner.step, meta step (Identity + {products}, replay=0)"
        methods[name] = lambda s=meta_step: s.step(batch)
    fixed_step = learner(
        Identity(), meta_loss=meltr.LinearMetaLoss(3), meta_optimizer=None, replay=0
    )
    methods["MetaLearner.step, fixed LinearMetaLoss"] = lambda: fixed_step.step(batch)
    results, peaks = {}, {}
    for name, fn in methods.items():
        reset_grads()
        results[name] = fn()
    for name, fn in methods.items():
        reset_grads()
        peaks[name] = peak_allocated_mb(fn)
    activations_mb = peak_allocated_mb(lambda: loss_source(model, batch))
    times = time_round_robin(methods, repeats, reset_grads)

    print(
        f"CPU ({torch.get_num_threads()} torch thread(s)), torch {torch.__version__}; backbone "
        f"{SMALL.layers} layers x width {SMALL.width}, seq {SMALL.seq}, batch {SMALL.batch}, "
        f"{param_mb:.1f} MB of "
        f"parameters; min and median of {repeats} interleaved rounds.\n"
        f"Damped reference: spectral radius of H ~ {reference.radius:.4g} "
        f"({POWER_ITERATIONS} power iterations), lambda = {damping:.4g}, float64 CG "
        f"{reference.cg_iterations} iterations to relative residual {reference.cg_residual:.1e}\n"
    )
    print(
        "| method | min ms | median ms | x plain | x reference | peak MB | err exact | "
        "cos exact | err products |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    plain_ms, ref_ms = min(times[PLAIN]), min(times[REFERENCE])

    def fmt(x: float | None, spec: str = ".1e") -> str:
        return "—" if x is None else format(x, spec)

    for name, fn_times in times.items():
        grads = results[name] if isinstance(results[name], list) else None
        exact_err = cos = products_err = None
        if grads is not None:
            exact_err = relative_error(grads, reference.hypergradient)
            cos = cosine(grads, reference.hypergradient)
            autograd_name = name.rsplit(" + ", 1)[0] + " + autograd"
            if " + " in name and autograd_name in results and autograd_name != name:
                products_err = relative_error(grads, results[autograd_name])
        best = min(fn_times)
        print(
            f"| {name} | {best:.1f} | {statistics.median(fn_times):.1f} | "
            f"{best / plain_ms:.2f} | {best / ref_ms:.2f} | {peaks[name]:.1f} | "
            f"{fmt(exact_err)} | {fmt(cos, '.4f')} | {fmt(products_err)} |"
        )
    plain_mb = peaks[PLAIN]
    allowed_mb = 0.1 * activations_mb + param_mb
    print(
        f"\nactivations (forward with graph) {activations_mb:.1f} MB; targets: <= 1.45x plain, "
        f"<= 0.40x reference recipe, peak <= plain + 10% of activations + one parameter copy "
        f"= {plain_mb + allowed_mb:.1f} MB"
    )
    for products in ["finite_difference", *IDENTITY_ONLY_PRODUCTS]:
        name = f"Identity() + {products}"
        best, peak = min(times[name]), peaks[name]
        print(
            f"{name}: {best / plain_ms:.2f}x plain step, {best / ref_ms:.2f}x reference recipe, "
            f"peak {peak:.1f} MB ({peak - plain_mb:+.1f} MB over plain)"
        )


if __name__ == "__main__":
    main()
