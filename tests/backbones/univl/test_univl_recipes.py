"""The UniVL recipes through the command-line tools: the quick recipe trained end to end for
retrieval and for captioning (shrunk to seconds), tools/evaluate.py on the captioning checkpoint
against captions generated and scored here, tools/inspect_checkpoint.py on a state dict in the
official layout, and every recipe's wiring."""

import json
from pathlib import Path

import gin
import pytest
import torch
from official_univl import official_state_dict
from univl_tiny import TINY

import meltr.tasks.captioning as captioning
import meltr.train.configurables  # noqa: F401  (the gin registrations)
from meltr.data.configurables import synthetic_features_dir
from meltr.data.stream import eval_loader
from meltr.metrics.captioning import CAPTION_METRICS, caption_scores
from meltr.train import build
from meltr.train.cli import main as train_main
from meltr.train.config import parse_gin
from meltr.train.evaluate_cli import main as evaluate_main
from meltr.train.inspect_cli import main as inspect_main

REPO = Path(__file__).resolve().parents[3]
TINY_MODEL = [
    "--UniVL.hidden_size=16",
    "--UniVL.heads=2",
    "--UniVL.intermediate_size=16",
    "--UniVL.text_layers=1",
    "--UniVL.visual_layers=1",
    "--UniVL.cross_layers=1",
    "--UniVL.decoder_layers=1",
    "--MetaLossTransformer.dim=8",
    "--MetaLossTransformer.heads=2",
    "--MetaLossTransformer.ff_dim=8",
    "--MetaLossTransformer.scale_hidden=8",
]
RECIPES = (
    "univl_youcook2_retrieval",
    "univl_youcook2_caption",
    "univl_youcook2_caption_transcript",
    "univl_msrvtt_caption",
    "univl_mosi",
    "univl_quick",
    "univl_quick_caption",
)


@pytest.fixture(autouse=True)
def quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MELTR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)


def quick_args(recipe: str, output: Path, num_val: int) -> list[str]:
    return [
        "--gin",
        f"gin/{recipe}.gin",
        "--output",
        str(output),
        "--synthetic_features.num_train=24",
        f"--synthetic_features.num_val={num_val}",
        "--synthetic_features.num_test=6",
        *TINY_MODEL,
        "--MetaLearner.replay=2",
        "--train.steps=4",
        "--train.batch_size=4",
        "--train.eval_every=4",
        "--train.checkpoint_every=4",
        "--train.log_every=2",
        "--train_loader.num_workers=0",
    ]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_quick_retrieval_trains_end_to_end(tmp_path):
    run = tmp_path / "run"
    assert train_main(quick_args("univl_quick", run, num_val=4)) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["selection"]["metric"] == "val/t2v_R@1"
    test = results["last"]
    assert test["test/num_videos"] == 6 and test["test/num_items"] == 18  # 3 references a clip
    assert 0 <= test["test/t2v_R@1"] <= 100 and 1 <= test["test/t2v_MnR"] <= 6
    logged = records(run)
    tasks = ("align", "joint", "cmlm", "cmfm", "m_joint", "m_align", "decoder", "m_decoder")
    assert all(f"loss/{task}" in logged[0] for task in tasks)
    assert any("meta/L_pri" in record for record in logged)  # the meta step of step 3 ran


def _direct_captions(run: Path, data_dir: str) -> tuple[dict, dict]:
    """Captions of the test split generated here from last.pt (no Captioning task) and their
    references: the model called on each clip's first item, with its transcript."""
    parse_gin([str(run / "config.gin")], [])
    settings, recipe = build.read_recipe()
    components = build.build(settings, recipe)
    model = components.model.eval()
    model.load_state_dict(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"])
    tokenizer = components.tokenizer
    predictions, references = {}, {}
    with torch.no_grad():
        for batch in eval_loader(data_dir, components.decoder, 5, "test", num_workers=0):
            for row, video_id in enumerate(batch["video_id"]):
                references.setdefault(video_id, []).append(batch["caption"][row])
                if video_id in predictions:
                    continue
                tokens = model(
                    mode="generate",
                    features=batch["features"][row : row + 1],
                    feature_mask=batch["feature_mask"][row : row + 1],
                    text_ids=batch["transcript_ids"][row : row + 1],
                    text_mask=batch["transcript_mask"][row : row + 1],
                    bos_id=tokenizer.cls_id,
                    eos_id=tokenizer.sep_id,
                    pad_id=tokenizer.pad_id,
                    max_length=gin.query_parameter("%MAX_WORDS"),
                    beam_size=5,
                )["tokens"]
                predictions[video_id] = tokenizer.decode(tokens[0].tolist())
    return predictions, references


def test_quick_captioning_trains_and_evaluates_as_computed_directly(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert train_main(quick_args("univl_quick_caption", run, num_val=0)) == 0
    trained = json.loads((run / "results.json").read_text())["last"]
    data_dir = (
        synthetic_features_dir()
    )  # the shards the run trained on (gin still holds its bindings)
    capsys.readouterr()

    scored = []

    def recorded(predictions, references):
        scored.append((predictions, references))
        return caption_scores(predictions, references)

    monkeypatch.setattr(captioning, "caption_scores", recorded)
    checkpoint = run / "checkpoints" / "last.pt"
    assert evaluate_main(["--gin", str(run / "config.gin"), "--checkpoint", str(checkpoint)]) == 0
    evaluated = json.loads(checkpoint.with_name("last.test-1views.json").read_text())

    # What tools/evaluate.py scored is what the model generates for each clip, decoded, against
    # every reference of the clip; its metrics are the final ones of the training run.
    assert scored == [_direct_captions(run, data_dir)]
    assert len(scored[0][0]) == 6 and sum(map(len, scored[0][1].values())) == 18
    for name in CAPTION_METRICS:
        assert evaluated[f"test/{name}"] == pytest.approx(trained[f"test/{name}"], abs=1e-9)
        assert 0 <= evaluated[f"test/{name}"] <= 1000
    assert evaluated["test/num_items"] == 6 and evaluated["test/num_references"] == 18


def _vocab(path: Path, size: int) -> Path:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    path.write_text("\n".join(specials + [f"word{i}" for i in range(size - 5)]) + "\n")
    return path


@pytest.mark.parametrize(
    ("recipe", "new_heads"),
    [
        ("univl_youcook2_retrieval", []),
        (
            "univl_mosi",
            [
                "feature_projection.weight",
                "feature_projection.bias",
                "sentiment_dense.weight",
                "sentiment_dense.bias",
            ],
        ),
    ],
)
def test_inspect_reports_no_missing_key_of_the_official_layout(recipe, new_heads, tmp_path, capsys):
    checkpoint = tmp_path / "univl.pretrained.bin"
    torch.save(official_state_dict(TINY), checkpoint)
    sizes = {k: v for k, v in TINY.items() if k != "vocab_size"}
    argv = ["--gin", f"gin/{recipe}.gin", "--checkpoint", str(checkpoint)]
    argv += [f"--VOCAB={_vocab(tmp_path / 'vocab.txt', TINY['vocab_size'])}"]
    argv += [f"--UniVL.{name}={value}" for name, value in sizes.items()]
    assert inspect_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "UniVL"
    assert sorted(report["missing"]) == sorted(new_heads)
    assert report["unexpected"] == [] and len(report["loaded"]) == len(official_state_dict(TINY))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_builds_with_its_losses_and_meta_network(recipe, tmp_path):
    vocab = _vocab(tmp_path / "vocab.txt", 12)
    bindings = [
        f"VOCAB = '{vocab}'",
        f"DATA_DIR = '{tmp_path}'",
        "train.require_checkpoint = False",
    ]
    bindings += [arg.removeprefix("--").replace("=", " = ") for arg in TINY_MODEL]
    parse_gin([f"gin/{recipe}.gin"], bindings)
    settings, recipe_components = build.read_recipe()
    components = build.build(settings, recipe_components)
    tasks = recipe_components.loss_source.tasks
    primary = {"sentiment": "mosi", "decoder": "caption", "align": "retrieval"}[tasks[0]]
    assert primary in recipe or (recipe == "univl_quick" and primary == "retrieval")
    assert components.meta_loss.num_tasks == len(tasks)
    assert components.task.selection_metric in ("t2v_R@1", "CIDEr", "mae")


@pytest.mark.parametrize("scheme", "abcde")
def test_table7_schemes_weight_the_primary_loss_one(scheme, tmp_path):
    vocab = _vocab(tmp_path / "vocab.txt", 12)
    parse_gin(
        ["gin/univl_youcook2_retrieval.gin", f"gin/baselines/univl_table7_{scheme}.gin"],
        [f"VOCAB = '{vocab}'", *(a.removeprefix("--").replace("=", " = ") for a in TINY_MODEL)],
    )
    components = build.build(*build.read_recipe())
    weights = components.meta_loss(torch.eye(8))  # M(e_t) = the weight of task t
    auxiliary = {"a": 0.0, "b": 0.01, "c": 0.1, "d": 0.5, "e": 1.0}[scheme]
    torch.testing.assert_close(weights, torch.tensor([1.0] + [auxiliary] * 7))
    assert components.recipe.meta_optimizer is None
