"""A diverging run never writes a checkpoint in a bad state and, when it stops, keeps only
checkpoints an update was applied from (meltr.train.divergence), checked against the run's own
per-step record (analysis/steps.jsonl: which updates were applied)."""

import math

import pytest
import torch

from meltr.train.cli import main
from meltr.train.run_log import read_jsonl

STOP_AFTER = ["--train.max_consecutive_skips=4", "--train.steps=40", "--train.eval_every=1000"]


def applied_steps(run) -> set[int]:
    """The steps whose inner update was applied: finite task losses and meta loss (the learner
    skips the update otherwise), from the per-step record."""
    return {
        record["step"]
        for record in read_jsonl(run / "analysis" / "steps.jsonl")
        if all(
            record[key] is not None and math.isfinite(record[key])
            for key in record
            if key.startswith("loss/") or key == "meta_loss"
        )
    }


def step_of(path) -> int:
    return torch.load(path, weights_only=True)["step"]


def diverge(tiny_args, run, capsys, *bindings: str) -> tuple[str, list[str]]:
    """Run the tiny recipe with ``bindings`` until it stops as diverged (exit 1); its stderr and
    warnings."""
    with pytest.warns(UserWarning) as caught:
        assert main(tiny_args(run) + [*bindings, *STOP_AFTER]) == 1
    return capsys.readouterr().err, [str(warning.message) for warning in caught]


def test_an_exploding_meta_network_writes_no_checkpoint_and_resume_restarts(
    tiny_args, tmp_path, capsys
):
    # Meta lr 1e6: phi grows to ~1e6 (finite) at the first meta step (step 2) and M is NaN on
    # every later step, so every update from step 2 on is skipped.
    run = tmp_path / "run"
    error, warned = diverge(
        tiny_args, run, capsys, "--meta/Adam.lr=1e6", "--train.checkpoint_every=2"
    )
    assert any("the last checkpoint is not saved: the latest" in message for message in warned)
    applied = applied_steps(run)
    assert applied == {1}  # the meta network diverged at step 2
    assert "the run diverged at step 2" in error
    assert "holds no good checkpoint" in error and "--resume starts it again from step 0" in error
    assert not (run / "checkpoints").exists()  # step 2, 4: skipped, never saved

    assert main(["--output", str(run), "--resume", "--meta/Adam.lr=1e-3", "--train.steps=4"]) == 0
    assert "holds no checkpoint yet: starting the run from step 0" in capsys.readouterr().out
    assert step_of(run / "checkpoints" / "last.pt") == 4


def test_the_checkpoint_a_run_diverged_from_is_set_aside_and_the_good_one_named(
    tiny_args, tmp_path, capsys
):
    # Backbone lr 1e6: the first updates are applied (finite weights of ~1e5..1e6), then the
    # losses are NaN: the checkpoint of the last applied step looks healthy but is not.
    run = tmp_path / "run"
    bindings = ("--backbone/AdamW.lr=1e6", "--train.checkpoint_every=1")
    error, _ = diverge(tiny_args, run, capsys, *bindings)
    last_applied = max(applied_steps(run))
    assert applied_steps(run) == set(range(1, last_applied + 1))
    diverged = run / "checkpoints" / "set_aside" / "last.pt.diverged"
    assert step_of(diverged) == last_applied  # every update from it failed
    good = run / "checkpoints" / "last.prev.pt"
    assert step_of(good) == last_applied - 1  # an update from it (last_applied) was applied
    assert f"The last good checkpoint is {good} (step {last_applied - 1})" in error
    assert not (run / "checkpoints" / "last.pt").exists()

    resume = ["--output", str(run), "--resume", "--backbone/AdamW.lr=1e-4"]
    assert main([*resume, f"--train.steps={last_applied + 2}"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from {good} at step {last_applied - 1}" in out
    assert "backbone/AdamW.lr 1000000.0 -> 0.0001" in out
    assert step_of(run / "checkpoints" / "last.pt") == last_applied + 2
