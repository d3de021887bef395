"""Training-health warnings on hand-made log records, and their flags in a real run's metrics."""

import math
import warnings

import pytest

from meltr.train.cli import main
from meltr.train.health import FLAGS, HealthMonitor, HealthThresholds
from meltr.train.run_log import read_metrics


def test_a_primary_loss_at_chance_for_patience_records_warns_once():
    monitor = HealthMonitor("itc", math.log(32), None, HealthThresholds(patience=3))
    at_chance = {"loss/itc": math.log(32) * 1.01, "loss/mlm": 4.0, "meta_loss": 1.0}
    assert monitor.check(1, at_chance)["health/primary_at_chance"] == 0.0
    assert monitor.check(2, {**at_chance, "loss/itc": 2.0})["health/primary_at_chance"] == 0.0
    monitor.check(3, at_chance)
    monitor.check(4, at_chance)
    with pytest.warns(UserWarning, match="itc has stayed at its chance value 3.466"):
        flags = monitor.check(5, at_chance)
    assert flags["health/primary_at_chance"] == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fired once: no second warning
        assert monitor.check(6, at_chance)["health/primary_at_chance"] == 1.0


def test_a_negative_primary_loss_derivative_for_patience_records_warns():
    monitor = HealthMonitor("itc", None, None, HealthThresholds(patience=2))
    record = {"loss/itc": 1.0, "loss/mlm": 2.0, "meta_loss": -0.1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # M < 0 alone, or one negative record, is no warning
        monitor.check(1, {**record, "dM/dl/itc": -0.004, "dM/dl/mlm": 0.3})
        monitor.check(2, {**record, "dM/dl/itc": 0.002, "dM/dl/mlm": -0.3})  # resets
        monitor.check(3, {**record, "dM/dl/itc": -0.004, "dM/dl/mlm": -0.1})
    with pytest.warns(UserWarning, match="itc has stayed negative.*and so has every other task"):
        flags = monitor.check(4, {**record, "dM/dl/itc": -0.003, "dM/dl/mlm": -0.2})
    assert flags["health/primary_ascending"] == 1.0


def test_an_exploding_meta_loss_and_always_clipped_hypergradients():
    monitor = HealthMonitor("ce", None, 1.0, HealthThresholds(patience=2))
    with pytest.warns(UserWarning, match="exceeds 100 x the sum"):
        flags = monitor.check(2, {"loss/ce": 1.0, "loss/rotation": 1.0, "meta_loss": 201.0})
    assert flags["health/meta_loss_exploding"] == 1.0
    monitor.check(3, {"loss/ce": 1.0, "meta_loss": 1.0, "meta/hypergrad_norm": 5.0})
    monitor.check(4, {"loss/ce": 1.0, "meta_loss": 1.0, "meta/hypergrad_norm": 0.5})  # resets
    monitor.check(5, {"loss/ce": 1.0, "meta_loss": 1.0, "meta/hypergrad_norm": 5.0})
    with pytest.warns(UserWarning, match="exceeded MetaLearner.meta_grad_clip = 1"):
        flags = monitor.check(6, {"loss/ce": 1.0, "meta_loss": 1.0, "meta/hypergrad_norm": 3.0})
    assert flags["health/primary_at_chance"] == 0.0  # no chance value given: never checked
    assert flags["health/hypergrad_always_clipped"] == 1.0
    assert monitor.state["fired"] == ["meta_loss_exploding", "hypergrad_always_clipped"]


def test_a_run_logs_the_flags_and_the_analysis_files(tiny_args, tmp_path):
    run = tmp_path / "run"
    assert main(tiny_args(run)) == 0
    train_records = [r for r in read_metrics(run) if "loss/itc" in r]
    assert all({f"health/{flag}" for flag in FLAGS} <= r.keys() for r in train_records)
    per_step = (run / "analysis" / "steps.jsonl").read_text().splitlines()
    assert len(per_step) == 6
    snapshots = sorted(p.name for p in (run / "analysis" / "meta_loss").iterdir())
    assert snapshots == ["step-00000003.pt", "step-00000006.pt"]


def test_a_fresh_default_meta_network_does_not_warn_of_an_ascending_primary(tiny_args, tmp_path):
    """The default init starts at dM/dl = 1: with a patience of one log record, no record of the
    run flags primary_ascending (the paper's init starts near 0, of either sign)."""
    run = tmp_path / "run"
    args = [*tiny_args(run), "--train.log_every=1", "--train.health_patience=1"]
    assert main(args) == 0
    records = [r for r in read_metrics(run) if "dM/dl/itc" in r]
    assert len(records) == 6
    assert all(r["dM/dl/itc"] > 0.5 and r["health/primary_ascending"] == 0.0 for r in records)
