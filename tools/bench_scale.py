"""Meta-step cost at the paper's model sizes (prints markdown tables).

Models (``--models``; random weights, one entry each in ``ENTRIES``, so adding a backbone is one
entry: a builder returning its model, loss source and batches):

- ``allinone``: All-in-one at the release's size: ViT-B/16 (width 768, 12 blocks, 12 heads),
  3 frames of 224 px, text 40 tokens, vocabulary 30522; losses ``itc`` (primary) and ``mlm``
  (``AllInOneRetrievalLoss``); default batch 2.
- ``transformer``: the benchmark transformer of ``tools/bench_hypergrad.py`` at BERT-base size
  (width 768, 12 layers, 12 heads, 2 sequences of 240 tokens, vocabulary 512; 3 losses).
- ``small``: that benchmark's own transformer (width 256, 4 layers, batch 8 x 64 tokens).

Rows (``--rows``), each one call on one batch used as both primary and aux batch:

- ``plain``: a training step: forward, backward of the sum of the losses, AdamW step;
- ``release``: the MELTR release's hypergradient (mlvlab/MELTR ``MELTRgrad``): a forward of the
  primary loss (All-in-one's release computes only that task; Violet's computes all), a forward
  of all losses, ``dL_pri/dw``, ``d M / dw`` with ``create_graph``, double backward to phi; math
  attention kernel (the fused kernels have no double-backward rule);
- ``central`` / ``one_sided``: ``MetaLearner.hypergradient`` with Identity and
  ``products="finite_difference"`` / ``"finite_difference_one_sided"``;
- ``neumann`` / ``cg``: Neumann(3) and ConjugateGradient(5 iterations, ``tol=0``) with
  finite-difference products.

Every optimizer has learning rate 0, so no row changes the problem. Timing: each row is called
once with memory profiling (its warm-up), then ``--repeats`` timed rounds (``--heavy-repeats``
for Neumann and CG; with 0 their time is that of the profiled call), rows interleaved and the
order rotated each round, garbage collector paused; min and median. The plain step gets one more
untimed call first (AdamW creates its state). Ratios use minima of the same run.

Memory: the peak of the tensors allocated during a call and alive at once (CPU: from the
profiler's allocator events, see ``bench_hypergrad.peak_allocated_mb``; CUDA:
``torch.cuda.max_memory_allocated`` over what was allocated before the call). "Activations" is
the same peak for a forward that keeps its graph. On CUDA the finite-difference products keep
their restore copy of the weights in pinned host memory, which this does not count.

Options for CUDA: ``--sdpa flash`` (needs ``--bf16``), ``--bf16`` (bf16 autocast around every
call; weights stay float32), ``--checkpointing`` (non-reentrant activation checkpointing of each
transformer block). ``--accuracy`` prints instead the hypergradient error of the
finite-difference products against ``forward`` products (exact), in float32 and bf16 autocast.
``--profile`` prints where the time of the default hypergradient goes.

    python tools/bench_scale.py                        # All-in-one ViT-B on CPU (~9 minutes)
    python tools/bench_scale.py --models small transformer --rows plain release central one_sided
    python tools/bench_scale.py --accuracy --models small transformer allinone
    python tools/bench_scale.py --device cuda --bf16 --sdpa flash --checkpointing
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_hypergrad  # noqa: E402  (the sibling tool: benchmark transformer, memory helper)

import meltr  # noqa: E402
import meltr.finite_differences  # noqa: E402
import meltr.hypergradients  # noqa: E402
import meltr.learner  # noqa: E402
import meltr.objective  # noqa: E402
from meltr.objective import LossSource, math_attention  # noqa: E402
from meltr.solvers import ConjugateGradient, Identity, Neumann  # noqa: E402

GAMMA = 0.1
DEFAULT_PRODUCTS = "finite_difference"


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


# ---------------------------------------------------------------------- models


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


def _transformer_builder(size: bench_hypergrad.TransformerSize, name: str):
    def build(batch_size: int | None, device: torch.device) -> Workload:
        sized = bench_hypergrad.TransformerSize(
            size.width, size.layers, size.heads, size.seq, batch_size or size.batch, size.vocab
        )
        model = bench_hypergrad.Backbone(sized).to(device)

        def make_batch(seed: int) -> dict:
            return {k: v.to(device) for k, v in bench_hypergrad.make_batch(sized, seed).items()}

        return Workload(
            model=model,
            loss_source=bench_hypergrad.loss_source,
            primary_source=bench_hypergrad.loss_source,  # Violet's release: a full forward
            make_batch=make_batch,
            num_tasks=3,
            description=(
                f"{name}: width {sized.width}, {sized.layers} layers, {sized.heads} heads, batch "
                f"{sized.batch} x {sized.seq} tokens, vocab {sized.vocab}; losses cls "
                "(primary), mlm, smooth"
            ),
        )

    return build


BERT_BASE_SIZE = bench_hypergrad.TransformerSize(768, 12, 12, 240, 2, 512)

ENTRIES: dict[str, Entry] = {
    "allinone": Entry(build_allinone, 2),
    "transformer": Entry(_transformer_builder(BERT_BASE_SIZE, "benchmark transformer"), 2),
    "small": Entry(_transformer_builder(bench_hypergrad.SMALL, "small benchmark transformer"), 8),
}


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute each of ``model.fsdp_units()`` in backward (non-reentrant checkpointing)."""
    from torch.utils.checkpoint import checkpoint

    units = getattr(model, "fsdp_units", None)
    if units is None:
        raise ValueError(f"{type(model).__name__} names no fsdp_units() to checkpoint")
    for unit in units():
        unit.forward = partial(checkpoint, unit.forward, use_reentrant=False)


# ---------------------------------------------------------------------- execution context


@dataclass(frozen=True)
class Setup:
    device: torch.device
    bf16: bool
    sdpa: str

    def context(self, math: bool = False) -> contextlib.AbstractContextManager:
        """Autocast (``--bf16``) and the attention kernel (``--sdpa``; math for ``math``)."""
        stack = contextlib.ExitStack()
        if self.bf16:
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        if math:
            stack.enter_context(math_attention())
        elif self.sdpa != "default":
            stack.enter_context(sdpa_kernel(SDPA_BACKENDS[self.sdpa]))
        return stack

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def peak_mb(setup: Setup, fn: Callable[[], object]) -> float:
    """Peak MiB of tensors allocated by ``fn()`` and alive at once (see module docstring)."""
    if setup.device.type != "cuda":
        return bench_hypergrad.peak_allocated_mb(fn)
    setup.synchronize()
    torch.cuda.reset_peak_memory_stats(setup.device)
    before = torch.cuda.memory_allocated(setup.device)
    fn()
    setup.synchronize()
    return (torch.cuda.max_memory_allocated(setup.device) - before) / 2**20


# ---------------------------------------------------------------------- rows


ROW_NAMES = {
    "plain": "plain training step",
    "release": "release recipe (double backward, H^-1 = I, math attention)",
    "central": "Identity + finite_difference (central)",
    "one_sided": "Identity + finite_difference_one_sided",
    "task_gradients": "Identity + task_gradients",
    "neumann": "Neumann(3) + finite_difference",
    "cg": "ConjugateGradient(5) + finite_difference",
}
HEAVY_ROWS = ("neumann", "cg")


def make_learner(
    workload: Workload, meta: nn.Module, solver: object, products: str
) -> meltr.MetaLearner:
    return meltr.MetaLearner(
        workload.model,
        meta,
        workload.loss_source,
        torch.optim.AdamW(workload.model.parameters(), lr=0.0),
        torch.optim.Adam(meta.parameters(), lr=0.0),
        solver=solver,
        products=products,
        gamma=GAMMA,
    )


def release_hypergradient(
    workload: Workload, meta: nn.Module, primary_batch: Any, aux_batch: Any
) -> list[torch.Tensor]:
    """The release's hypergradient (``-v4`` of ``MELTRgrad.grad``, the regularizer's direct
    term dropped), written from its definition: ``L_val = l_0(B_pri) + gamma |sum l - M|`` on
    the aux losses, ``d/dphi [dL_val/dw . dM/dw]`` by double backward."""
    weights = [p for p in workload.model.parameters() if p.requires_grad]
    phi = list(meta.parameters())
    primary = next(iter(workload.primary_source(workload.model, primary_batch).values()))
    train = torch.stack(list(workload.loss_source(workload.model, aux_batch).values()))
    meta_value = meta(train.to(next(meta.parameters()).dtype))
    val = primary + GAMMA * (train.sum() - meta_value).abs()
    d_val = torch.autograd.grad(val, weights, retain_graph=True, allow_unused=True)
    d_train = torch.autograd.grad(meta_value, weights, create_graph=True, allow_unused=True)
    pairs = [(t, a) for t, a in zip(d_train, d_val, strict=True) if t is not None and a is not None]
    grads = torch.autograd.grad(
        [t for t, _ in pairs],
        phi,
        grad_outputs=[a for _, a in pairs],
        allow_unused=True,
        materialize_grads=True,
    )
    return [-g for g in grads]


def make_rows(workload: Workload, setup: Setup, rows: Sequence[str]) -> dict[str, Callable]:
    """``{row: fn}`` where ``fn()`` runs the row once in its context."""
    model, batch = workload.model, workload.make_batch(0)
    meta = meltr.MetaLossTransformer(workload.num_tasks).to(setup.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    solvers = {
        "central": (Identity(), "finite_difference"),
        "one_sided": (Identity(), "finite_difference_one_sided"),
        "task_gradients": (Identity(), "task_gradients"),
        "neumann": (Neumann(steps=3, alpha=1.0), "finite_difference"),
        "cg": (ConjugateGradient(maxiter=5, tol=0.0), "finite_difference"),
    }

    def plain() -> None:
        with setup.context():
            sum(workload.loss_source(model, batch).values()).backward()
        optimizer.step()

    def release() -> None:
        with setup.context(math=True):
            release_hypergradient(workload, meta, batch, batch)

    def hypergradient(learner: meltr.MetaLearner) -> None:
        with setup.context():
            learner.hypergradient(batch, batch)

    available: dict[str, Callable] = {"plain": plain, "release": release}
    for name, (solver, products) in solvers.items():
        available[name] = partial(hypergradient, make_learner(workload, meta, solver, products))
    return {name: available[name] for name in rows}


@dataclass
class RowResult:
    times: list[float]
    peak_mb: float | None
    error: str | None = None


def measure(
    workload: Workload,
    setup: Setup,
    rows: Sequence[str],
    repeats: int,
    heavy_repeats: int,
    memory: bool,
) -> tuple[dict[str, RowResult], float | None]:
    """Per-row times (s) and peaks (MiB), and the activation peak of a forward with graph."""
    fns = make_rows(workload, setup, rows)
    params = [p for p in workload.model.parameters()]

    def reset() -> None:
        for p in params:
            p.grad = None

    def timed(fn: Callable) -> float:
        reset()
        gc.collect()
        gc.disable()
        setup.synchronize()
        start = time.perf_counter()
        try:
            fn()
            setup.synchronize()
        finally:
            gc.enable()
        return time.perf_counter() - start

    results: dict[str, RowResult] = {}
    if "plain" in fns:
        reset()
        fns["plain"]()  # AdamW state
    activations = None
    if memory:
        batch = workload.make_batch(0)
        reset()
        with setup.context():
            activations = peak_mb(setup, lambda: workload.loss_source(workload.model, batch))
    for name, fn in fns.items():
        reset()
        try:
            if memory:
                start = time.perf_counter()
                peak = peak_mb(setup, fn)
                first = time.perf_counter() - start
            else:
                peak, first = None, timed(fn)
            results[name] = RowResult([first] if name in HEAVY_ROWS else [], peak)
        except RuntimeError as error:  # e.g. no double-backward rule under this setup
            results[name] = RowResult([], None, f"{type(error).__name__}: {str(error)[:120]}")
        print(f"  {name}: first call done {time.strftime('%H:%M:%S')}", flush=True)
    names = [n for n in fns if results[n].error is None]
    rounds = max(repeats, heavy_repeats)
    for round_index in range(rounds):
        shift = round_index % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            wanted = heavy_repeats if name in HEAVY_ROWS else repeats
            if round_index >= wanted:
                continue
            if name in HEAVY_ROWS and round_index == 0:
                results[name].times.clear()  # replace the profiled call's time
            results[name].times.append(timed(fns[name]))
        print(f"  round {round_index + 1}/{rounds} done {time.strftime('%H:%M:%S')}", flush=True)
    reset()
    return results, activations


def parameter_mb(model: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def cost_table(
    results: dict[str, RowResult], activations: float | None, param_mb: float
) -> list[str]:
    lines = [
        "| method | min s | median s | calls | x plain | x release | peak MB "
        "| extra over plain MB | extra / activations (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    plain = results.get("plain")
    release = results.get("release")
    plain_s = min(plain.times) if plain and plain.times else None
    release_s = min(release.times) if release and release.times else None

    def ratio(x: float, base: float | None) -> str:
        return "—" if base is None else f"{x / base:.2f}"

    for name, result in results.items():
        if result.error is not None:
            lines.append(f"| {ROW_NAMES[name]} | failed: {result.error} | | | | | | | |")
            continue
        best = min(result.times)
        peak = "—" if result.peak_mb is None else f"{result.peak_mb:.0f}"
        extra = extra_share = "—"
        if result.peak_mb is not None and plain and plain.peak_mb is not None:
            extra_mb = result.peak_mb - plain.peak_mb
            extra = f"{extra_mb:+.0f}"
            if activations:
                extra_share = f"{100 * extra_mb / activations:+.0f}"
        lines.append(
            f"| {ROW_NAMES[name]} | {best:.2f} | {statistics.median(result.times):.2f} | "
            f"{len(result.times)} | {ratio(best, plain_s)} | {ratio(best, release_s)} | {peak} | "
            f"{extra} | {extra_share} |"
        )
    return lines


def target_lines(
    results: dict[str, RowResult],
    activations: float | None,
    param_mb: float,
    device: torch.device,
) -> list[str]:
    """The issue's targets for the default products and the one-sided option."""
    plain, release = results.get("plain"), results.get("release")
    lines = []
    for name in ("central", "one_sided", "task_gradients"):
        result = results.get(name)
        if result is None or result.error is not None or plain is None or not plain.times:
            continue
        best = min(result.times)
        parts = [f"{best / min(plain.times):.2f}x plain (target <= 1.45)"]
        if release is not None and release.times:
            parts.append(f"{best / min(release.times):.2f}x release (target <= 0.40)")
        if result.peak_mb is not None and plain.peak_mb is not None and activations:
            extra = result.peak_mb - plain.peak_mb
            allowed = 0.1 * activations + (param_mb if device.type != "cuda" else 0.0)
            what = "10% of activations" + (" + one parameter copy" if device.type != "cuda" else "")
            parts.append(f"extra peak {extra:+.0f} MB (target <= {allowed:.0f} MB = {what})")
        lines.append(f"{ROW_NAMES[name]}: " + ", ".join(parts))
    return lines


# ---------------------------------------------------------------------- profile


@contextlib.contextmanager
def phase_timers(setup: Setup) -> Iterator[dict[str, float]]:
    """Accumulated seconds of the hypergradient's phases while the context is open, by wrapping
    (and afterwards restoring) the functions that make them up."""
    totals: dict[str, float] = {}
    targets = [
        (meltr.learner.MetaLearner, "_forward", "forward with graph (loss source)"),
        (meltr.hypergradients, "backward_gradients", "backward for v"),
        (meltr.hypergradients, "task_gradients", "per-task backwards (v, c)"),
        (meltr.finite_differences, "finite_difference_step", "step rule (|w|.|q|, ||q||^2)"),
        (meltr.objective.PinnedLosses, "__call__", "perturbed no-grad forwards"),
        (
            meltr.finite_differences,
            "perturbed_evaluations",
            "perturbed evaluations (with forwards)",
        ),
    ]
    originals = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]

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

    for (owner, attr, label), (_, _, fn) in zip(targets, originals, strict=True):
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
                setup.synchronize()
                start = time.perf_counter()
                fns[name]()
                setup.synchronize()
                total = time.perf_counter() - start
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
        lines += [
            "",
            f"{ROW_NAMES[name]}: {total:.2f} s = {total / plain_s:.2f}x plain",
            "",
            "| phase | s | % of hypergradient | x plain step |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {label} | {seconds:.3f} | {100 * seconds / total:.1f} | {seconds / plain_s:.3f} |"
            for label, seconds in totals.items()
        ]
    return lines


# ---------------------------------------------------------------------- accuracy


def relative_error(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    a = torch.cat([t.reshape(-1) for t in actual]).double()
    e = torch.cat([t.reshape(-1) for t in expected]).double()
    return float((a - e).norm() / e.norm())


ACCURACY_PRODUCTS = ("finite_difference", "finite_difference_one_sided", "task_gradients")


def accuracy_lines(
    name: str, workload: Workload, setup: Setup, precisions: Sequence[str]
) -> list[str]:
    """Hypergradient (Identity) errors of the finite-difference products against ``forward``
    products in the same precision, and (bf16 rows) against float32 ``forward`` products."""
    meta = meltr.MetaLossTransformer(workload.num_tasks).to(setup.device)
    pairs = {
        "same batch": (workload.make_batch(0), None),
        "two batches": (workload.make_batch(0), workload.make_batch(1)),
    }
    lines = []
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
            lines.append(f"| {name} | {pairing} | {label} | " + " | ".join(cells) + " |")
            print(f"  {name}, {pairing}, {label} done {time.strftime('%H:%M:%S')}", flush=True)
    return lines


# ---------------------------------------------------------------------- main


def machine_line(setup: Setup) -> str:
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    device = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "CPU"
    return (
        f"{device}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), load average {load}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["allinone"], choices=sorted(ENTRIES))
    parser.add_argument("--rows", nargs="+", default=list(ROW_NAMES), choices=list(ROW_NAMES))
    parser.add_argument("--batch", type=int, default=None, help="batch size (model default)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per row (2)")
    parser.add_argument(
        "--heavy-repeats", type=int, default=0, help="timed rounds of Neumann and CG (0)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sdpa", default="default", choices=["default", *SDPA_BACKENDS])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast around every call")
    parser.add_argument("--checkpointing", action="store_true", help="checkpoint every block")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory peaks")
    parser.add_argument("--accuracy", action="store_true", help="errors instead of costs")
    parser.add_argument("--profile", action="store_true", help="phase breakdown instead")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["float32", "bf16"],
        choices=["float32", "bf16"],
        help="--accuracy: float32 and/or bf16 autocast",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.heavy_repeats < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1, --heavy-repeats >= 0")
    if args.batch is not None and args.batch < 2:
        parser.error("--batch must be >= 2 (contrastive losses need in-batch negatives)")
    if args.sdpa == "flash" and not args.bf16:
        parser.error("--sdpa flash needs --bf16 (the flash kernel takes no float32)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = Setup(torch.device(args.device), args.bf16, args.sdpa)
    command = "python tools/bench_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"command: {command.strip()}")
    print(f"machine: {machine_line(setup)}")
    flags = [f"sdpa {args.sdpa}", "bf16 autocast" if args.bf16 else "float32"]
    flags += ["activation checkpointing"] if args.checkpointing else []
    batches = "see the table" if args.accuracy else "primary batch = aux batch"
    print(f"settings: {', '.join(flags)}; gamma {GAMMA}; {batches}\n", flush=True)
    accuracy = []
    for name in args.models:
        torch.manual_seed(0)
        workload = ENTRIES[name].build(args.batch, setup.device)
        if args.checkpointing:
            enable_checkpointing(workload.model)
        param_mb = parameter_mb(workload.model)
        print(f"{workload.description}; {param_mb:.0f} MB of parameters", flush=True)
        if args.accuracy:
            accuracy += accuracy_lines(name, workload, setup, args.precisions)
            continue
        if args.profile:
            print("\n".join(profile_lines(workload, setup, args.repeats)) + "\n")
            continue
        results, activations = measure(
            workload, setup, args.rows, args.repeats, args.heavy_repeats, not args.no_memory
        )
        plain = results.get("plain")
        if activations is not None:
            print(
                f"activations (forward with graph) {activations:.0f} MB"
                + (f", plain step peak {plain.peak_mb:.0f} MB" if plain and plain.peak_mb else "")
            )
        print(f"after: load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
        print("\n".join(cost_table(results, activations, param_mb)) + "\n")
        print("\n".join(target_lines(results, activations, param_mb, setup.device)) + "\n")
    if accuracy:
        print(
            "\n| model | batches | precision | central | one-sided | task gradients "
            "| bf16 vs float32: forward | central | one-sided | task gradients |\n"
            "|---|---|---|---|---|---|---|---|---|"
        )
        print("\n".join(accuracy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
