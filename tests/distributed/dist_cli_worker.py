"""The training command on one spawned rank (separate from dist_workers so that the other
workers' processes do not import the training system)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

import meltr
from meltr.train.cli import main


def cli_worker(args: list[str], signal_rank: int | None, signal_at_step: int | None) -> None:
    """``tools/train.py args`` on this rank; rank ``signal_rank`` sends itself SIGUSR1 during
    its step ``signal_at_step`` (1-based), as a scheduler's preemption notice would arrive."""
    if signal_rank == int(os.environ["RANK"]):
        original_step = meltr.MetaLearner.step

        def step_with_signal(self, batch):
            if self.step_count + 1 == signal_at_step:
                os.kill(os.getpid(), signal.SIGUSR1)
            return original_step(self, batch)

        meltr.MetaLearner.step = step_with_signal
    if main(args) != 0:
        raise RuntimeError(f"tools/train.py {' '.join(args)} failed")


def killed_while_saving_worker(args: list[str], step: int) -> None:
    """``tools/train.py args`` on this rank, killed (SIGKILL, as by the kernel or a scheduler's
    kill -9) in the middle of writing the checkpoint of ``step``: after its DCP shards and its
    own file, before the checkpoint is complete."""
    original_save = torch.save

    def save_then_die(obj, file, *rest, **options):
        original_save(obj, file, *rest, **options)
        path = str(file) if isinstance(file, str | os.PathLike) else ""
        if f".step-{step:08d}.tmp" in path and Path(path).name.startswith("rank-"):
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_then_die
    main(args)
