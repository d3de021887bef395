"""The training command on one spawned rank (separate from dist_workers so that the other
workers' processes do not import the training system)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import meltr
from meltr.train import sharded
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
    write_file = sharded._save_file

    def write_then_die(obj, path: Path) -> None:
        write_file(obj, path)
        if path.parent.name == f".step-{step:08d}.tmp" and path.name.startswith("rank-"):
            os.kill(os.getpid(), signal.SIGKILL)

    sharded._save_file = write_then_die
    main(args)
