"""Meta-step cost at the paper's model sizes (prints markdown tables).

Models (``--models``; random weights, one entry each in ``meltr.benchmarks.workloads.ENTRIES``,
so adding a backbone is one entry: a builder returning its model, loss source and batches):

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
profiler's allocator events, see ``meltr.benchmarks.common.peak_allocated_mb``; CUDA:
``torch.cuda.max_memory_allocated`` over what was allocated before the call). "Activations" is
the same peak for a forward that keeps its graph. On CUDA the finite-difference products keep
their restore copy of the weights in pinned host memory, which this does not count.

Options for CUDA: ``--sdpa flash`` (needs ``--bf16``), ``--bf16`` (bf16 autocast around every
call; weights stay float32), ``--checkpointing`` (non-reentrant activation checkpointing of each
transformer block). ``--accuracy`` prints instead the hypergradient error of the
finite-difference products against ``forward`` products (exact), in float32 and bf16 autocast.
``--profile`` prints where the time of the default hypergradient goes (both in
``meltr.benchmarks.scale_analysis``).

    python tools/bench_scale.py                        # All-in-one ViT-B on CPU (~9 minutes)
    python tools/bench_scale.py --models small transformer --rows plain release central one_sided
    python tools/bench_scale.py --accuracy --models small transformer allinone
    python tools/bench_scale.py --device cuda --bf16 --sdpa flash --checkpointing
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from meltr.benchmarks.common import (
    GAMMA,
    load_average,
    markdown_row,
    markdown_table,
    rotated,
    timed_call,
)
from meltr.benchmarks.scale_analysis import ACCURACY_HEADER, accuracy_rows, profile_lines
from meltr.benchmarks.scale_rows import HEAVY_ROWS, ROW_NAMES, SDPA_BACKENDS, Setup, make_rows
from meltr.benchmarks.scale_rows import peak_mb as peak_mb  # re-exported for the tests
from meltr.benchmarks.workloads import ENTRIES, Workload, enable_checkpointing, parameter_mb

COST_HEADER = (
    "method",
    "min s",
    "median s",
    "calls",
    "x plain",
    "x release",
    "peak MB",
    "extra over plain MB",
    "extra / activations (%)",
)


@dataclass
class RowResult:
    times: list[float]
    peak_mb: float | None
    error: str | None = None


def _first_calls(
    fns: dict[str, Callable], setup: Setup, reset: Callable[[], None], memory: bool
) -> dict[str, RowResult]:
    """Each row called once: its memory peak (``memory``) or its time; the time of a heavy row's
    first call is kept (it may get no timed round). A row that raises RuntimeError (e.g. no
    double-backward rule under this setup) is recorded as failed."""
    results: dict[str, RowResult] = {}
    for name, fn in fns.items():
        reset()
        try:
            if memory:
                start = time.perf_counter()
                peak = peak_mb(setup, fn)
                first = time.perf_counter() - start
            else:
                peak, first = None, timed_call(fn, setup.synchronize)
            results[name] = RowResult([first] if name in HEAVY_ROWS else [], peak)
        except RuntimeError as error:
            results[name] = RowResult([], None, f"{type(error).__name__}: {str(error)[:120]}")
        print(f"  {name}: first call done {time.strftime('%H:%M:%S')}", flush=True)
    return results


def _timed_rounds(
    fns: dict[str, Callable],
    results: dict[str, RowResult],
    setup: Setup,
    reset: Callable[[], None],
    repeats: int,
    heavy_repeats: int,
) -> None:
    """``repeats`` (heavy rows: ``heavy_repeats``) interleaved timed rounds of the rows that did
    not fail, the order rotated each round; times appended to ``results``."""
    names = [n for n in fns if results[n].error is None]
    rounds = max(repeats, heavy_repeats)
    for round_index in range(rounds):
        for name in rotated(names, round_index):
            wanted = heavy_repeats if name in HEAVY_ROWS else repeats
            if round_index >= wanted:
                continue
            if name in HEAVY_ROWS and round_index == 0:
                results[name].times.clear()  # replace the profiled call's time
            reset()
            results[name].times.append(timed_call(fns[name], setup.synchronize))
        print(f"  round {round_index + 1}/{rounds} done {time.strftime('%H:%M:%S')}", flush=True)


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

    if "plain" in fns:
        reset()
        fns["plain"]()  # AdamW state
    activations = None
    if memory:
        batch = workload.make_batch(0)
        reset()
        with setup.context():
            activations = peak_mb(setup, lambda: workload.loss_source(workload.model, batch))
    results = _first_calls(fns, setup, reset, memory)
    _timed_rounds(fns, results, setup, reset, repeats, heavy_repeats)
    reset()
    return results, activations


def cost_table(
    results: dict[str, RowResult], activations: float | None, param_mb: float
) -> list[str]:
    """The markdown table of the rows' times, ratios and memory peaks."""
    lines = markdown_table(COST_HEADER, [])
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
        cells = [f"{best:.2f}", f"{statistics.median(result.times):.2f}", str(len(result.times))]
        cells += [ratio(best, plain_s), ratio(best, release_s), peak, extra, extra_share]
        lines.append(markdown_row([ROW_NAMES[name], *cells]))
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


def machine_line(setup: Setup) -> str:
    """The device, cores, torch version and threads, and the load average now."""
    device = torch.cuda.get_device_name(setup.device) if setup.device.type == "cuda" else "CPU"
    return (
        f"{device}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), load average {load_average()}"
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
            accuracy += accuracy_rows(name, workload, setup, args.precisions)
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
        print(f"after: load average {load_average()}\n")
        print("\n".join(cost_table(results, activations, param_mb)) + "\n")
        print("\n".join(target_lines(results, activations, param_mb, setup.device)) + "\n")
    if accuracy:
        print("\n" + "\n".join(markdown_table(ACCURACY_HEADER, accuracy)))
    return 0
