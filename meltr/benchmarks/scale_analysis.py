"""The two other readings of ``tools/bench_scale.py``: ``--profile`` (where the time of the
default hypergradient goes) and ``--accuracy`` (the hypergradient error of the finite-difference
products against exact ``forward`` products, in float32 and bf16 autocast)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

import meltr
from meltr.benchmarks.common import markdown_table, relative_error, timed_call
from meltr.benchmarks.internals import PROFILED_PHASES
from meltr.benchmarks.scale_rows import ROW_NAMES, Setup, make_learner, make_rows
from meltr.benchmarks.workloads import Workload
from meltr.solvers import Identity

ACCURACY_PRODUCTS = ("finite_difference", "finite_difference_one_sided", "task_gradients")
ACCURACY_HEADER = (
    "model",
    "batches",
    "precision",
    "central",
    "one-sided",
    "task gradients",
    "bf16 vs float32: forward",
    "central",
    "one-sided",
    "task gradients",
)
PROFILE_HEADER = ("phase", "s", "% of hypergradient", "x plain step")


@contextlib.contextmanager
def phase_timers(setup: Setup) -> Iterator[dict[str, float]]:
    """Accumulated seconds of the hypergradient's phases (``PROFILED_PHASES``) while the context
    is open, by wrapping (and afterwards restoring) the functions that make them up."""
    totals: dict[str, float] = {}
    originals = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in PROFILED_PHASES]

    def wrap(fn: Callable, label: str) -> Callable:
        def timed(*args, **kwargs):
            setup.synchronize()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                setup.synchronize()
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

        return timed

    for (owner, attr, label), (_, _, fn) in zip(PROFILED_PHASES, originals, strict=True):
        setattr(owner, attr, wrap(fn, label))
    try:
        yield totals
    finally:
        for owner, attr, fn in originals:
            setattr(owner, attr, fn)


def profile_lines(workload: Workload, setup: Setup, repeats: int) -> list[str]:
    """Phase breakdown of the default hypergradient and the other Identity products against a
    plain step of the same run: after a warm-up call each, ``repeats`` interleaved calls; the
    fastest call of each is reported."""
    names = ["plain", "central", "one_sided", "task_gradients"]
    fns = make_rows(workload, setup, names)
    for fn in fns.values():
        fn()
    best: dict[str, tuple[float, dict[str, float]]] = {}
    for _ in range(repeats):
        for name in names:
            for p in workload.model.parameters():
                p.grad = None
            with phase_timers(setup) as totals:
                total = timed_call(fns[name], setup.synchronize)
            if name not in best or total < best[name][0]:
                best[name] = (total, dict(totals))
    plain_s = best["plain"][0]
    lines = [f"plain training step: {plain_s:.2f} s (fastest of {repeats})"]
    for name in names[1:]:
        total, totals = best[name]
        forwards = totals.get("perturbed no-grad forwards", 0.0)
        if "perturbed evaluations (with forwards)" in totals:
            copies = totals.pop("perturbed evaluations (with forwards)") - forwards
            totals["weight perturbation and restore"] = copies
        totals["rest (meta network, per-task combinations, bookkeeping)"] = total - sum(
            totals.values()
        )
        lines += ["", f"{ROW_NAMES[name]}: {total:.2f} s = {total / plain_s:.2f}x plain", ""]
        lines += markdown_table(
            PROFILE_HEADER,
            (
                [
                    label,
                    f"{seconds:.3f}",
                    f"{100 * seconds / total:.1f}",
                    f"{seconds / plain_s:.3f}",
                ]
                for label, seconds in totals.items()
            ),
        )
    return lines


def accuracy_rows(
    name: str, workload: Workload, setup: Setup, precisions: Sequence[str]
) -> list[list[str]]:
    """Rows of the ``ACCURACY_HEADER`` table: hypergradient (Identity) errors of the
    finite-difference products against ``forward`` products in the same precision, and (bf16
    rows) against float32 ``forward`` products."""
    meta = meltr.MetaLossTransformer(workload.num_tasks).to(setup.device)
    pairs = {
        "same batch": (workload.make_batch(0), None),
        "two batches": (workload.make_batch(0), workload.make_batch(1)),
    }
    rows = []
    for pairing, (primary, aux) in pairs.items():
        aux = primary if aux is None else aux
        exact32 = None
        for bf16 in [p == "bf16" for p in precisions]:
            precision = Setup(setup.device, bf16, setup.sdpa)
            hyper = {}
            for products in ("forward", *ACCURACY_PRODUCTS):
                learner = make_learner(workload, meta, Identity(), products)
                with precision.context():
                    hyper[products] = learner.hypergradient(primary, aux)
            if not bf16:
                exact32 = hyper["forward"]
            elif exact32 is None:
                with Setup(setup.device, False, setup.sdpa).context():
                    learner = make_learner(workload, meta, Identity(), "forward")
                    exact32 = learner.hypergradient(primary, aux)
            cells = [f"{relative_error(hyper[p], hyper['forward']):.1e}" for p in ACCURACY_PRODUCTS]
            if bf16:
                cells += [
                    f"{relative_error(hyper[p], exact32):.1e}"
                    for p in ("forward", *ACCURACY_PRODUCTS)
                ]
            else:
                cells += ["—"] * (1 + len(ACCURACY_PRODUCTS))
            label = "bf16 autocast" if bf16 else "float32"
            rows.append([name, pairing, label, *cells])
            print(f"  {name}, {pairing}, {label} done {time.strftime('%H:%M:%S')}", flush=True)
    return rows
