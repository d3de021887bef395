"""What the benchmarks share: comparing two hypergradients, the memory peak of a call, timing a
call, the machine's load and markdown tables."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

GAMMA = 0.1  # the regularizer's weight in L_pri, in every benchmark


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors concatenated into one float64 vector."""
    return torch.cat([t.reshape(-1) for t in tensors]).double()


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """The inner product of two lists of tensors, each list taken as one vector."""
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def relative_error(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """``||actual - expected|| / ||expected||`` over all the tensors together."""
    a, e = flat(actual), flat(expected)
    return float((a - e).norm() / e.norm())


def cosine(actual: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    """The cosine similarity of the two lists of tensors, each taken as one vector."""
    return float(F.cosine_similarity(flat(actual), flat(expected), dim=0))


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


def timed_call(fn: Callable[[], object], synchronize: Callable[[], None] = lambda: None) -> float:
    """Seconds ``fn()`` takes, the garbage collector collected before and paused during the call;
    ``synchronize()`` (a device's) runs before the clock starts and before it stops."""
    gc.collect()
    gc.disable()
    try:
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        return time.perf_counter() - start
    finally:
        gc.enable()


def rotated(names: Sequence, shift: int) -> list:
    """``names`` started ``shift`` places later (modulo its length): rounds of interleaved
    measurements rotate their order so that a slow drift of the machine's load favours no row."""
    if not names:
        return []
    shift %= len(names)
    return [*names[shift:], *names[:shift]]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, ``"a / b / c"``."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def markdown_row(cells: Sequence[str]) -> str:
    """One line of a markdown table."""
    return "| " + " | ".join(cells) + " |"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a markdown table: the header, the separator, one line per row."""
    return [markdown_row(header), "|" + "---|" * len(header), *map(markdown_row, rows)]
