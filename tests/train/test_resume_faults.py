"""--resume continues from the checkpoint of the highest step (never a touched older file, never
rotating a newer one away), restores a torn record of its own step, and applies or refuses
changed settings by name (meltr.train.resume_settings)."""

import json
import os
import shutil

import pytest
import torch

from meltr.train.cli import main
from meltr.train.run_log import read_metrics

BASE_LR = 5e-4  # backbone/AdamW.lr of gin/quickstart.gin
WARMUP_FRACTION = 0.1  # warmup_linear_schedule's default


def step_of(path) -> int:
    return torch.load(path, weights_only=True)["step"]


def logged_lr(run) -> dict[int, float]:
    return {record["step"]: record["lr"] for record in read_metrics(run) if "lr" in record}


def expected_lr(base: float, total: int, step: int) -> float:
    """The rate of the update of ``step`` (1-based) under warmup then linear decay to zero over
    ``total`` updates (WarmupLinearDecay's definition, written out)."""
    update, warmup = step - 1, round(WARMUP_FRACTION * total)
    if update < warmup:
        return base * (update + 1) / warmup
    return base * (total - update) / (total - warmup)


@pytest.fixture
def finished_run(tiny_args, tmp_path):
    """A finished 6-step run logging every step (checkpoints at 2, 4, 6)."""
    run = tmp_path / "run"
    args = tiny_args(run) + ["--train.log_every=1", "--train.checkpoint_every=2"]
    assert main(args + ["--train.eval_every=6"]) == 0
    return run


def test_extending_train_steps_continues_the_schedule_rebuilt_for_the_new_total(
    finished_run, tmp_path, capsys
):
    assert all(
        lr == pytest.approx(expected_lr(BASE_LR, 6, step), rel=1e-6)
        for step, lr in logged_lr(finished_run).items()
    )
    faster = tmp_path / "faster"
    shutil.copytree(finished_run, faster)
    capsys.readouterr()
    assert main(["--output", str(finished_run), "--resume", "--train.steps=10"]) == 0
    assert "--resume applies the changed settings: train.steps 6 -> 10" in capsys.readouterr().out
    lr = logged_lr(finished_run)
    for step in range(7, 11):  # the 10-step schedule's rates, not the 6-step one's zero
        assert lr[step] == pytest.approx(expected_lr(BASE_LR, 10, step), rel=1e-6)

    # A changed learning rate is the new base rate, scaled by the same schedule; the meta
    # optimizer takes its changed rate as it is.
    args = ["--output", str(faster), "--resume", "--train.steps=10"]
    assert main([*args, "--backbone/AdamW.lr=1e-3", "--meta/Adam.lr=2e-4"]) == 0
    lr = logged_lr(faster)
    for step in range(7, 11):
        assert lr[step] == pytest.approx(expected_lr(1e-3, 10, step), rel=1e-6)
    last = torch.load(faster / "checkpoints" / "last.pt", weights_only=True)
    assert last["learner"]["meta_optimizer"]["param_groups"][0]["lr"] == 2e-4


@pytest.mark.parametrize(
    ("binding", "named"),
    [
        ("--train.seed=1", "train.seed (0 -> 1: the random states"),
        ("--train.batch_size=4", "train.batch_size (8 -> 4"),
        ("--MetaLearner.replay=1", "MetaLearner.replay (3 -> 1"),
        ("--train.steps=3", "train.steps (6 -> 3: the checkpoint is at 6)"),
        ("--AllInOne.width=64", "AllInOne.width 32 -> 64"),  # the weights do not fit
    ],
)
def test_a_setting_the_checkpoint_fixes_is_refused_by_name(finished_run, capsys, binding, named):
    before = {path: path.read_bytes() for path in finished_run.rglob("*") if path.is_file()}
    assert main(["--output", str(finished_run), "--resume", binding]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # one line, after any warning
    assert error.startswith("configuration error:") and named in error
    after = {path: path.read_bytes() for path in finished_run.rglob("*") if path.is_file()}
    assert after == before


def test_resume_takes_the_highest_step_not_the_newest_file(finished_run, capsys):
    checkpoints = finished_run / "checkpoints"
    # best.pt replaced by an older state (step 4) and touched: the newest file, the lowest step
    shutil.copy(checkpoints / "last.prev.pt", checkpoints / "best.pt")
    later = os.stat(checkpoints / "last.pt").st_mtime + 60
    os.utime(checkpoints / "best.pt", (later, later))
    capsys.readouterr()
    assert main(["--output", str(finished_run), "--resume", "--train.steps=8"]) == 0
    assert f"resuming from {checkpoints / 'last.pt'} at step 6" in capsys.readouterr().out
    assert step_of(checkpoints / "last.pt") == 8
    assert step_of(checkpoints / "last.prev.pt") == 6  # the step-6 checkpoint was kept


def test_a_torn_record_of_the_checkpoint_step_is_written_back(finished_run):
    metrics = finished_run / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    assert last["step"] == 6  # the evaluation record of step 6, the checkpoint's step
    metrics.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # torn
    with pytest.warns(UserWarning, match="record of step 6 was torn; restored"):
        assert main(["--output", str(finished_run), "--resume", "--train.steps=8"]) == 0
    records = read_metrics(finished_run)
    assert last in records
    assert [r["step"] for r in records if "loss/itc" in r] == list(range(1, 9))
