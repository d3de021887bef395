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
``2 / lambda_max(H + lambda I)`` even if rho is underestimated by half). The exact reference
(``meltr.benchmarks.hypergrad_reference``), computed independently of ``meltr``'s solvers and
products, runs in float64: ``q* = (H + lambda I)^-1 v`` by conjugate gradient on
double-backward HVPs to a relative residual of 1e-10 (stopping with an error if it
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
import statistics
from collections.abc import Callable, Sequence

import torch

import meltr
from meltr.benchmarks.common import (
    GAMMA,
    cosine,
    dot,
    markdown_table,
    peak_allocated_mb,
    relative_error,
    rotated,
    timed_call,
)
from meltr.benchmarks.hypergrad_reference import (
    POWER_ITERATIONS,
    Damped,
    Reference,
    Vector,
    exact_reference,
)
from meltr.benchmarks.transformer import SMALL, Backbone, loss_source, make_batch
from meltr.objective import math_attention
from meltr.solvers import ConjugateGradient, Identity, Neumann, Unrolled

PLAIN = "plain training step"
REFERENCE = "reference recipe (authors': 2 forwards, double backward, H^-1 = I)"
IDENTITY_ONLY_PRODUCTS = ["finite_difference_one_sided", "task_gradients"]
Methods = dict[str, Callable[[], object]]


def time_round_robin(
    methods: Methods, repeats: int, reset: Callable[[], None]
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
        for name in rotated(names, round_index):
            reset()
            times[name].append(1e3 * timed_call(methods[name]))
    return times


class Problem:
    """The benchmark's model, meta network, batch and learners over them (every optimizer with
    learning rate 0, so no method changes w or phi)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = Backbone()
        self.meta = meltr.MetaLossTransformer(3)
        self.batch = make_batch()
        self.params = list(self.model.parameters())
        self.param_mb = sum(p.numel() * p.element_size() for p in self.params) / 2**20

    def learner(self, solver, products: str = "finite_difference", **kwargs) -> meltr.MetaLearner:
        meta = kwargs.pop("meta_loss", self.meta)
        return meltr.MetaLearner(
            self.model,
            meta,
            loss_source,
            torch.optim.AdamW(self.model.parameters(), lr=0.0),
            kwargs.pop("meta_optimizer", torch.optim.Adam(self.meta.parameters(), lr=0.0)),
            solver=solver,
            products=products,
            gamma=GAMMA,
            **kwargs,
        )

    def reset_grads(self) -> None:
        """Unset every ``.grad`` so each call starts like the first."""
        for p in self.params:
            p.grad = None


def baseline_methods(problem: Problem) -> Methods:
    """The plain training step, the authors' recipe (two forwards or one) and the floor."""
    model, meta, batch, params = problem.model, problem.meta, problem.batch, problem.params
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
                dot(grad_w, v), list(meta.parameters()), materialize_grads=True
            )
            return [-g for g in grads]

    def floor() -> None:
        losses = torch.stack(list(loss_source(model, batch).values()))
        torch.autograd.grad(losses.sum(), params)
        with torch.no_grad():
            for _ in range(2):
                loss_source(model, batch)

    return {
        PLAIN: plain_step,
        REFERENCE: lambda: reference_recipe(shared_forward=False),
        "reference recipe, one shared forward": lambda: reference_recipe(shared_forward=True),
        "floor: forward + backward + 2 no-grad forwards": floor,
    }


def learner_methods(problem: Problem, reference: Reference, quick: bool) -> Methods:
    """The hypergradient of every solver x products backend, Unrolled (not ``quick``), and the
    ``MetaLearner.step`` rows."""
    batch, damping = problem.batch, reference.damping
    solvers = [
        Identity(),
        Damped(Neumann(steps=3, alpha=1.0 / (reference.radius + damping)), damping),
        ConjugateGradient(maxiter=5, damping=damping),
    ]
    products_names = ["finite_difference", "forward", "autograd"]
    if quick:
        solvers, products_names = [solvers[0], solvers[2]], ["finite_difference", "autograd"]
    methods: Methods = {}
    for solver in solvers:
        extra = [] if solver.uses_hvp else IDENTITY_ONLY_PRODUCTS
        for products in products_names + extra:
            hyper = problem.learner(solver, products)
            methods[f"{solver!r} + {products}"] = lambda h=hyper: h.hypergradient(batch, batch)
    if not quick:
        unrolled = problem.learner(Unrolled(steps=3, lr=1e-3, optimizer="sgd"))
        methods[repr(unrolled.solver)] = lambda: unrolled.hypergradient(batch, batch)
    for products in ["finite_difference", *IDENTITY_ONLY_PRODUCTS]:
        meta_step = problem.learner(Identity(), products, replay=0, meta_every=1)
        name = f"MetaLearner.step, meta step (Identity + {products}, replay=0)"
        methods[name] = lambda s=meta_step: s.step(batch)
    fixed_step = problem.learner(
        Identity(), meta_loss=meltr.LinearMetaLoss(3), meta_optimizer=None, replay=0
    )
    methods["MetaLearner.step, fixed LinearMetaLoss"] = lambda: fixed_step.step(batch)
    return methods


def _fmt(x: float | None, spec: str = ".1e") -> str:
    return "—" if x is None else format(x, spec)


def result_rows(
    times: dict[str, list[float]],
    results: dict[str, object],
    peaks: dict[str, float],
    reference: Reference,
) -> list[list[str]]:
    """One table row per method: times, ratios, peak and the errors of its hypergradient."""
    plain_ms, ref_ms = min(times[PLAIN]), min(times[REFERENCE])
    rows = []
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
        rows.append(
            [
                name,
                f"{best:.1f}",
                f"{statistics.median(fn_times):.1f}",
                f"{best / plain_ms:.2f}",
                f"{best / ref_ms:.2f}",
                f"{peaks[name]:.1f}",
                _fmt(exact_err),
                _fmt(cos, ".4f"),
                _fmt(products_err),
            ]
        )
    return rows


def target_lines(
    times: dict[str, list[float]], peaks: dict[str, float], activations_mb: float, param_mb: float
) -> list[str]:
    """The targets, and where each Identity products backend stands against them."""
    plain_ms, ref_ms, plain_mb = min(times[PLAIN]), min(times[REFERENCE]), peaks[PLAIN]
    allowed_mb = 0.1 * activations_mb + param_mb
    lines = [
        f"\nactivations (forward with graph) {activations_mb:.1f} MB; targets: <= 1.45x plain, "
        f"<= 0.40x reference recipe, peak <= plain + 10% of activations + one parameter copy "
        f"= {plain_mb + allowed_mb:.1f} MB"
    ]
    for products in ["finite_difference", *IDENTITY_ONLY_PRODUCTS]:
        name = f"Identity() + {products}"
        best, peak = min(times[name]), peaks[name]
        lines.append(
            f"{name}: {best / plain_ms:.2f}x plain step, {best / ref_ms:.2f}x reference recipe, "
            f"peak {peak:.1f} MB ({peak - plain_mb:+.1f} MB over plain)"
        )
    return lines


HEADER = (
    "method",
    "min ms",
    "median ms",
    "x plain",
    "x reference",
    "peak MB",
    "err exact",
    "cos exact",
    "err products",
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and configurations")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (5; quick 2)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (2 if args.quick else 5)
    if args.threads < 1 or repeats < 1:
        parser.error("--threads and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    problem = Problem()
    reference = exact_reference(problem.model, problem.meta, problem.batch)
    methods = baseline_methods(problem) | learner_methods(problem, reference, args.quick)
    results, peaks = {}, {}
    for name, fn in methods.items():
        problem.reset_grads()
        results[name] = fn()
    for name, fn in methods.items():
        problem.reset_grads()
        peaks[name] = peak_allocated_mb(fn)
    activations_mb = peak_allocated_mb(lambda: loss_source(problem.model, problem.batch))
    times = time_round_robin(methods, repeats, problem.reset_grads)

    print(
        f"CPU ({torch.get_num_threads()} torch thread(s)), torch {torch.__version__}; backbone "
        f"{SMALL.layers} layers x width {SMALL.width}, seq {SMALL.seq}, batch {SMALL.batch}, "
        f"{problem.param_mb:.1f} MB of "
        f"parameters; min and median of {repeats} interleaved rounds.\n"
        f"Damped reference: spectral radius of H ~ {reference.radius:.4g} "
        f"({POWER_ITERATIONS} power iterations), lambda = {reference.damping:.4g}, float64 CG "
        f"{reference.cg_iterations} iterations to relative residual {reference.cg_residual:.1e}\n"
    )
    print("\n".join(markdown_table(HEADER, result_rows(times, results, peaks, reference))))
    print("\n".join(target_lines(times, peaks, activations_mb, problem.param_mb)))
    return 0
