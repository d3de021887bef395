"""tools/bench_train.py (meltr.benchmarks.training): timing reconstruction from metrics.jsonl and
the table's statistics."""

import math

import pytest

from meltr.benchmarks import training as bench
from meltr.train.cli import main
from meltr.train.run_log import read_metrics


def test_run_timing_against_hand_computed_intervals():
    records = [
        # steps 1-10: 10 * 16 clips at 40 clips/s = 4 s; meta steps 3, 6, 9 at 0.5 s each
        {"step": 10, "time/clips_per_s": 40.0, "meta/seconds": 0.5},
        # steps 11-20: 160 clips at 80 clips/s = 2 s; meta steps 12, 15, 18 at 0.25 s
        {"step": 20, "time/clips_per_s": 80.0, "meta/seconds": 0.25},
        {"step": 20, "test/t2v_R@1": 10.0},  # an evaluation record: no timing
        # steps 21-25: 80 clips at 20 clips/s = 4 s; meta steps 21, 24 at 1.0 s
        {"step": 25, "time/clips_per_s": 20.0, "meta/seconds": 1.0},
    ]
    whole = bench.run_timing(records, batch_size=16, meta_every=3, skip_steps=0)
    assert whole.steps == 25
    assert whole.step_seconds == pytest.approx(4.0 + 2.0 + 4.0)
    assert whole.meta_seconds == pytest.approx(1.5 + 0.75 + 2.0)
    assert whole.seconds_per_100_steps == pytest.approx(100 * 10.0 / 25)

    warm = bench.run_timing(records, batch_size=16, meta_every=3, skip_steps=10)
    assert warm.steps == 15
    assert warm.step_seconds == pytest.approx(6.0)
    assert warm.meta_share == pytest.approx(2.75 / 6.0)


def test_run_timing_of_a_baseline_has_no_meta_time_and_refuses_empty_records():
    records = [{"step": 10, "time/clips_per_s": 50.0}, {"step": 20, "time/clips_per_s": 25.0}]
    timing = bench.run_timing(records, batch_size=5, meta_every=5, skip_steps=10)
    assert (timing.steps, timing.step_seconds, timing.meta_share) == (10, 2.0, 0.0)
    with pytest.raises(ValueError, match="after step 20"):
        bench.run_timing(records, batch_size=5, meta_every=5, skip_steps=20)


def test_run_timing_matches_the_loops_own_meta_share(tiny_args, tmp_path):
    """The loop accumulates step and meta seconds itself (``time/meta_share``, whole run); the
    reconstruction from the per-interval records must give the same share."""
    run = tmp_path / "run"
    assert main(tiny_args(run)) == 0  # batch 8, 6 steps, meta_every 2, log_every 2
    records = read_metrics(run)
    summary_timing, recall = bench.summarize_run(run)
    assert summary_timing.steps == 6 - 2  # the first log interval is left out
    assert recall == [r for r in records if "test/t2v_R@1" in r][-1]["test/t2v_R@1"]
    last_training_record = [r for r in records if "time/clips_per_s" in r][-1]
    timing = bench.run_timing(records, batch_size=8, meta_every=2, skip_steps=0)
    assert timing.steps == 6
    assert 0.0 < timing.meta_share < 1.0
    assert timing.meta_share == pytest.approx(last_training_record["time/meta_share"], rel=1e-9)


def test_statistics_and_table_cells():
    mean, spread = bench.mean_and_spread([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3)
    assert spread == pytest.approx(
        math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    )
    assert bench.mean_and_spread([3.0]) == (3.0, 0.0)
    assert bench.format_cell([0.1, 0.3], scale=100.0) == "20.0 ± 14.1"

    results = {
        bench.REFERENCE_ROW: bench.RowResults([10.0, 12.0], [0.0, 0.0], [0.0, 0.0], [5.0, 7.0]),
        "MELTR Identity, finite differences": bench.RowResults(
            [13.0, 15.0], [0.3, 0.2], [0.2, 0.2], [6.0, 6.0]
        ),
        bench.AUTOGRAD_ROW: bench.RowResults([16.0, 18.0], [0.6, 0.5], [0.4, 0.4], [6.0, 8.0]),
    }
    table = bench.markdown_table(results).splitlines()
    assert len(table) == 2 + 3
    # implied overhead: 0.2 / (1 - 0.2) = 25 %
    assert table[3] == (
        "| MELTR Identity, finite differences | 14.0 ± 1.4 | 25.0 ± 7.1 | 20.0 ± 0.0 | 25.0 ± 0.0 "
        "| 6.0 ± 0.0 |"
    )
    results["MELTR Identity, finite differences, replay=0"] = bench.RowResults(
        [12.0, 13.0], [0.25, 0.23], [0.2, 0.2], [6.0, 6.0]
    )
    targets = bench.target_lines(results)
    assert targets == [
        "Identity + finite differences, replay=10: adds 25.0% to multi-task (target <= 45%): met",
        "Identity + finite differences, replay=0: adds 24.0% to multi-task (target <= 22%): missed",
    ]


def test_row_selection_keeps_the_reference_row():
    names = [row.name for row in bench.select_rows(["task gradients"])]
    assert names == [
        bench.REFERENCE_ROW,
        "MELTR Identity, task gradients",
        "MELTR Identity, task gradients, replay=0",
    ]
    assert bench.select_rows(None) == bench.ROWS
    row = bench.identity_row("one-sided finite differences", replay0=True)
    assert row.bindings == (
        "MetaLearner.products = 'finite_difference_one_sided'",
        "MetaLearner.replay = 0",
    )
