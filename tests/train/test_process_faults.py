"""Faults that come from processes and signals, each with real ``tools/train.py`` processes: two
runs started together on one --output, a scheduler's signal to the whole process group (the
DataLoader workers included), and Ctrl-C before the first checkpoint."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from meltr.train.cli import main
from meltr.train.run_log import read_metrics

REPO = Path(__file__).resolve().parents[2]
TRAIN = [sys.executable, str(REPO / "tools" / "train.py")]


def start(args: list[str]) -> subprocess.Popen:
    """``tools/train.py args`` in its own process group (as a scheduler or a shell starts it)."""
    return subprocess.Popen(
        [*TRAIN, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_training(process: subprocess.Popen, run: Path, timeout: float = 120) -> None:
    """Wait until the run has logged its first training step."""
    deadline = time.monotonic() + timeout
    metrics = run / "metrics.jsonl"
    while not (metrics.exists() and metrics.stat().st_size):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the run logged nothing"
        time.sleep(0.1)


def long_run(tiny_args, run: Path) -> list[str]:
    """A run far longer than the test: it only ends by a signal."""
    return tiny_args(run) + [
        "--train_loader.num_workers=2",
        "--train.steps=100000",
        "--train.log_every=1",
        "--train.checkpoint_every=100000",
        "--train.eval_every=100000",
    ]


def test_two_runs_started_together_on_one_output_cannot_both_run(tiny_args, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(run) + ["--train.steps=4", "--train.eval_every=4"]
    first, second = start(args), start(args)
    outputs = [process.communicate(timeout=300)[0] for process in (first, second)]
    codes = sorted(process.returncode for process in (first, second))
    assert codes == [0, 2], outputs
    refused = outputs[[first.returncode, second.returncode].index(2)]
    assert str(run) in refused
    assert (
        "is in use by another training process (pid" in refused or "already holds a run" in refused
    )
    steps = [record["step"] for record in read_metrics(run) if "loss/itc" in record]
    assert steps == [2, 4]  # every step once


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_to_the_process_group_checkpoints_and_exits_0(tiny_args, tmp_path, signum):
    run = tmp_path / "run"
    process = start(long_run(tiny_args, run))
    wait_for_training(process, run)
    os.killpg(process.pid, signum)  # the main process and its DataLoader workers
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert f"stopped by a signal at step {last['step']}; continue with --resume" in output
    assert last["step"] >= max(record["step"] for record in read_metrics(run))


def test_ctrl_c_before_the_first_checkpoint_leaves_a_run_that_resume_restarts(
    tiny_args, tmp_path, capsys
):
    run = tmp_path / "run"
    process = start(long_run(tiny_args, run))
    wait_for_training(process, run)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 130, output
    assert "interrupted: No checkpoint was saved yet" in output and "--resume" in output
    # no traceback of the interruption (a DataLoader worker's multiprocessing thread may print
    # one of its own while the workers are ended, under load)
    assert "KeyboardInterrupt" not in output
    assert not (run / "checkpoints").exists() and (run / "config.gin").exists()

    finish = ["--output", str(run), "--resume", "--train.steps=4", "--train.checkpoint_every=4"]
    assert main([*finish, "--train.eval_every=4"]) == 0
    assert "holds no checkpoint yet: starting the run from step 0" in capsys.readouterr().out
    steps = [record["step"] for record in read_metrics(run) if "loss/itc" in record]
    assert steps == [1, 2, 3, 4]  # the interrupted attempt's records are gone
