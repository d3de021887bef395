"""Stop a run cleanly when the scheduler asks: SIGTERM (Slurm, Kubernetes) or SIGUSR1 (Slurm's
``--signal``) sets a flag; at the next step boundary all ranks agree on it with one all-reduce, so
every rank checkpoints and exits at the same step."""

from __future__ import annotations

import signal
from types import FrameType, TracebackType

import torch
import torch.distributed as dist

from meltr.ranks import is_data_parallel

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionHandler:
    """Context manager that records preemption signals while it is active.

    On entry it installs handlers for ``signals`` (main thread only); on exit it restores the
    previous handlers. ``stop_requested()`` is called once per step on every rank.
    """

    def __init__(
        self,
        signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS,
        device: torch.device | None = None,
    ) -> None:
        self.signals = signals
        self.device = device or torch.device("cpu")
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> PreemptionHandler:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    def stop_requested(self) -> bool:
        """True on every rank if any rank has received a signal (a collective: every rank must call
        it at the same step). ``device`` must suit the backend (a CUDA device for nccl)."""
        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=self.device)
        if is_data_parallel():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
