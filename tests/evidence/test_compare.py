"""tools/compare.py on tiny runs: the runs it makes, the table's numbers against the runs' own
metrics.jsonl, resuming, and configuration errors before anything is created."""

import csv
import json
import shutil

import numpy as np
import pytest
from tiny_recipe import tiny_quickstart_args

from meltr.evidence.compare_cli import main
from meltr.evidence.stats import paired_comparison
from meltr.train.run_log import read_jsonl

METHODS = [
    "--method",
    "multi-task=gin/baselines/mtl.gin",
    "--method",
    "meltr=MetaLearner.gamma=0.2",
]
METRIC = "best/test/t2v_R@1"


def recipe_args(dataset):
    """The tiny quickstart command line without its --output."""
    args = tiny_quickstart_args(dataset["root"], dataset["vocab"], "unused")
    at = args.index("--output")
    return args[:at] + args[at + 2 :]


@pytest.fixture(scope="module")
def comparison(tiny_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("compare") / "out"
    argv = [*recipe_args(tiny_dataset), *METHODS, "--seeds", "2", "--output", str(output)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        patch.setenv("WANDB_SILENT", "true")
        assert main(argv) == 0
    return output, argv


def test_each_method_and_seed_is_a_run_with_its_seed_and_bindings(comparison):
    output, _ = comparison
    for method in ("multi-task", "meltr"):
        for seed in (0, 1):
            config = (output / method / f"seed-{seed}" / "config.gin").read_text()
            assert f"train.seed = {seed}" in config
            assert ("FixedWeights" in config) == (method == "multi-task")
            if method == "meltr":
                assert "MetaLearner.gamma = 0.2" in config


def test_results_csv_holds_each_runs_logged_test_metric_at_its_selected_step(comparison):
    output, _ = comparison
    rows = list(csv.DictReader((output / "results.csv").open()))
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("meltr", "0"), ("meltr", "1"), ("multi-task", "0"), ("multi-task", "1")
    ]  # fmt: skip
    for row in rows:
        records = read_jsonl(output / row["method"] / f"seed-{row['seed']}" / "metrics.jsonl")
        evaluations = [r for r in records if "test/t2v_R@1" in r]
        # the tiny dataset has no val split: selection is on the test split, first best wins
        selected = max(evaluations, key=lambda r: (r["test/t2v_R@1"], -r["step"]))
        assert row["selection"] == "test/t2v_R@1"
        assert int(float(row["best_step"])) == selected["step"]
        assert float(row[METRIC]) == selected["test/t2v_R@1"]
        assert float(row["selection/value"]) == selected["test/t2v_R@1"]
        assert float(row["last/test/t2v_R@1"]) == evaluations[-1]["test/t2v_R@1"]


def test_results_md_states_the_per_method_statistics_and_the_paired_gain(comparison):
    output, _ = comparison
    rows = list(csv.DictReader((output / "results.csv").open()))
    values = {
        method: [
            float(r[METRIC]) for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == method
        ]
        for method in ("multi-task", "meltr")
    }
    table = (output / "results.md").read_text().split("## ")[0]
    lines = {
        line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| m")
    }
    for method, seeds in values.items():
        cells = [c.strip() for c in lines[method].split("|")[2:7]]
        expected = [2, np.mean(seeds), np.std(seeds, ddof=1), min(seeds), max(seeds)]
        assert cells == [str(expected[0]), *(f"{v:.2f}" for v in expected[1:])]
    gain = np.mean(np.subtract(values["meltr"], values["multi-task"]))
    assert f"| {gain:+.2f}" in lines["meltr"] and "(baseline)" in lines["multi-task"]
    test = paired_comparison(values["meltr"], values["multi-task"])
    if not np.isnan(test.p) and test.mean_difference != 0 and test.standard_error != 0:
        assert f"p = {test.p:.2f}" in lines["meltr"] or f"p = {test.p:.3f}" in lines["meltr"]
    interval, wilcoxon = [c.strip() for c in lines["meltr"].split("|")[8:11:2]]
    assert interval == f"[{test.ci_low:+.2f}, {test.ci_high:+.2f}]"
    assert wilcoxon == f"{test.wilcoxon_p:.3g}"
    text = (output / "results.md").read_text()
    assert "python tools/compare.py" in text
    last = text.split("## last/test/t2v_R@1")[1].split("## ")[0]
    last_meltr = [float(r["last/test/t2v_R@1"]) for r in rows if r["method"] == "meltr"]
    assert f"| meltr | 2 | {np.mean(last_meltr):.2f} |" in last
    assert (output / "results.png").stat().st_size > 1000


def test_each_runs_training_seconds_are_the_sum_of_its_logged_intervals(comparison):
    """results.json's step seconds against metrics.jsonl: each log record covers log_every
    steps of batch_size items at time/clips_per_s, so its seconds are items / clips_per_s."""
    output, _ = comparison
    for run in (path for path in output.glob("*/seed-*") if path.is_dir()):
        report = json.loads((run / "results.json").read_text())["time"]
        records = [r for r in read_jsonl(run / "metrics.jsonl") if "time/clips_per_s" in r]
        logged = sum(2 * 8 / r["time/clips_per_s"] for r in records)  # log_every 2, batch 8
        assert report["step_seconds"] == pytest.approx(logged, rel=1e-6)
        assert 0.0 <= report["meta_seconds"] < report["step_seconds"]
        assert (report["meta_seconds"] > 0) == (run.parent.name == "meltr")


def test_results_md_tabulates_the_seconds_per_run(comparison):
    output, _ = comparison
    rows = list(csv.DictReader((output / "results.csv").open()))
    section = (output / "results.md").read_text().split("## Training time per run")[1]
    seconds = {
        m: [float(r["time/step_seconds"]) for r in rows if r["method"] == m]
        for m in ("multi-task", "meltr")
    }
    meta = [float(r["time/meta_seconds"]) for r in rows if r["method"] == "meltr"]
    mean, std = np.mean(seconds["meltr"]), np.std(seconds["meltr"], ddof=1)
    relative = 100 * (mean / np.mean(seconds["multi-task"]) - 1)
    share = 100 * np.mean(meta) / mean
    assert f"| meltr | 2 | {mean:.1f} ± {std:.1f} | {share:.1f} | {relative:+.1f} % |" in section
    assert "| multi-task | 2 |" in section and "| +0.0 % |" in section


def test_a_repeated_command_keeps_finished_runs_and_resumes_an_unfinished_one(comparison):
    output, argv = comparison
    finished = output / "meltr" / "seed-0" / "results.json"
    kept = output / "multi-task" / "seed-1" / "results.json"
    kept_stamp, report = kept.stat().st_mtime_ns, json.loads(finished.read_text())
    finished.unlink()  # as if the run was stopped after its last checkpoint
    # ... and one stopped before its first checkpoint (Ctrl-C): --resume starts it again
    early = output / "multi-task" / "seed-0"
    early_report = json.loads((early / "results.json").read_text())
    (early / "results.json").unlink()
    shutil.rmtree(early / "checkpoints")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        assert main(argv) == 0
    assert kept.stat().st_mtime_ns == kept_stamp
    assert json.loads(finished.read_text())["best"] == report["best"]
    assert (output / "meltr" / "seed-0.log").read_text().count("run directory:") == 2
    rerun = json.loads((early / "results.json").read_text())
    assert rerun.pop("time").keys() == early_report.pop("time").keys()  # wall time varies
    assert rerun == early_report


def test_more_seeds_extend_a_finished_comparison(comparison):
    output, argv = comparison
    stamps = {p: p.stat().st_mtime_ns for p in output.glob("*/seed-*/results.json")}
    extended = [*argv[: argv.index("--seeds")], "--seeds", "3", *argv[argv.index("--seeds") + 2 :]]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        assert main(extended) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # seeds 0 and 1 kept
    rows = list(csv.DictReader((output / "results.csv").open()))
    assert sorted(r["seed"] for r in rows if r["method"] == "meltr") == ["0", "1", "2"]
    assert json.loads((output / "comparison.json").read_text())["seeds"] == [0, 1, 2]


def test_parallel_runs_and_per_method_seed_counts(comparison, tmp_path):
    """``--jobs 2`` runs two at a time with the same results as one at a time, and a method
    named ``NAME:K`` runs on the first K seeds only."""
    output, argv = comparison
    parallel = tmp_path / "parallel"
    methods = [
        "--method",
        "multi-task=gin/baselines/mtl.gin",
        "--method",
        "meltr:1=MetaLearner.gamma=0.2",
    ]
    args = [*argv[: argv.index(METHODS[0])], *methods, "--seeds", "2", "--jobs", "2"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        assert main([*args, "--output", str(parallel)]) == 0
    rows = list(csv.DictReader((parallel / "results.csv").open()))
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("meltr", "0"), ("multi-task", "0"), ("multi-task", "1")
    ]  # fmt: skip
    for method, seed in (("meltr", 0), ("multi-task", 1)):
        run = f"{method}/seed-{seed}/results.json"
        expected = json.loads((output / run).read_text())
        assert json.loads((parallel / run).read_text())["best"] == expected["best"]


def test_another_plan_in_the_same_directory_is_refused(comparison, capsys):
    output, argv = comparison
    changed = [*argv, "--train.steps=8"]
    assert main(changed) == 2
    assert "another plan" in capsys.readouterr().err


@pytest.mark.parametrize(
    "method, message",
    [
        ("bad name=gin/baselines/mtl.gin", "NAME[:SEEDS]=SPEC"),
        ("x=gin/baselines/missing.gin", "missing.gin"),
        ("x=MetaLearner.nonexistent=1", "nonexistent"),
        ("x=justaword", "neither a .gin file"),
        ("x:two=gin/baselines/mtl.gin", "SEEDS a number"),
        ("x:4=gin/baselines/mtl.gin", "seed count must be 1..3"),
    ],
)
def test_a_bad_method_fails_before_anything_is_created(
    tiny_dataset,
    tmp_path,
    capsys,
    method,
    message,
):
    output = tmp_path / "out"
    argv = [*recipe_args(tiny_dataset), "--method", method, "--output", str(output)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err and not output.exists()
