"""The ALPRO recipes through the command-line tools: the quick prompter recipe trains and its
checkpoint serves as PEM's prompter; the quick QA recipe trains with the four pretext losses
(one process, and two FSDP ranks) or leaves PEM out without a prompter; the MSVD-QA recipe's
loader reports only the QA head missing for a state dict in the release's layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from alpro_tiny import ENTITIES, FRAMES, PATCH, SIZE, TINY, TINY_OFFICIAL, prompter_files
from official_alpro import pretrain_shapes, random_state_dict
from tiny_recipe import (
    LOOP_SHRINK,
    META_SHRINK,
    cli_worker,
    recipe_environment,  # noqa: F401 (a fixture)
)

from meltr.backbones.alpro import Alpro, load_prompter
from meltr.data.configurables import alpro_quick_entities, alpro_quick_vocab
from meltr.data.synthetic.video_qa import cached_synthetic_qa
from meltr.train import build
from meltr.train.cli import configure, main
from meltr.train.distributed import spawn_local_ranks
from meltr.train.inspect_cli import main as inspect_main
from meltr.train.run_log import read_metrics
from meltr.train.sharded import latest_sharded

# A smaller tiny ALPRO than the quick recipes' (width 32, one block and layer of each kind)
# and the loop of tiny_recipe.LOOP_SHRINK.
SIZES = {
    "width": 32,
    "text_layers": 2,
    "fusion_layer": 1,
    "text_heads": 2,
    "text_inner": 32,
    "video_depth": 1,
    "video_heads": 2,
    "proj_dim": 8,
}
SHRINK = {f"Alpro.{name}": value for name, value in SIZES.items()} | LOOP_SHRINK
QA_DATA = {"num_train": 16, "num_val": 4, "num_test": 8, "workers": 1}
CAPTION_DATA = {"num_train": 16, "num_val": 4, "num_test": 8, "workers": 1}
pytestmark = pytest.mark.usefixtures("recipe_environment")


def args(recipe: str, output: Path, data: str, dataset: dict, **extra) -> list[str]:
    bindings = SHRINK | {f"{data}.{name}": value for name, value in dataset.items()} | extra
    return ["--gin", recipe, "--output", str(output)] + [f"--{k}={v}" for k, v in bindings.items()]


def quick_args(output: Path, prompter: Path | None, **extra) -> list[str]:
    return args(
        "gin/alpro_quick.gin",
        output,
        "violet_synthetic_qa",
        QA_DATA,
        PROMPTER_CHECKPOINT=prompter,
        **META_SHRINK | extra,
    )


def quick_network(**overrides) -> Alpro:
    """The shrunk quick recipe's network (its vocabulary, 4 frames of 32 px, 8-pixel patches)."""
    vocabulary = len(Path(alpro_quick_vocab()).read_text().splitlines())
    quick = dict(max_text_positions=24, image_size=32, patch_size=8, num_frames=4, mlp_ratio=2.0)
    return Alpro(**{"vocab_size": vocabulary} | quick | SIZES | overrides)


def test_prompter_recipe_trains_vtc_and_its_checkpoint_is_a_prompter(tmp_path):
    run = tmp_path / "prompter"
    assert main(args("gin/alpro_quick_prompter.gin", run, "synthetic_dataset", CAPTION_DATA)) == 0
    steps = [record for record in read_metrics(run) if "loss/vtc" in record]
    assert [record["step"] for record in steps] == [1, 2, 3, 4]
    results = json.loads((run / "results.json").read_text())
    assert results["selection"]["metric"] == "val/t2v_R@1"

    prompter = load_prompter(
        run / "checkpoints" / "best.pt",
        alpro_quick_entities(),
        alpro_quick_vocab(),
        model=quick_network,
    )
    assert prompter.num_entities == 10  # the 7 colours and 3 shapes of the generated clips
    soft, keep = prompter(torch.randn(2, 4, 3, 32, 32))
    torch.testing.assert_close(soft.sum(1), torch.ones(2))


def saved_quick_prompter(tmp_path: Path) -> Path:
    """A tiny prompter with the shrunk quick network's architecture (random weights)."""
    torch.manual_seed(5)
    path = tmp_path / "prompter.pt"
    torch.save(quick_network().state_dict(), path)
    return path


def test_quick_recipe_trains_with_the_four_pretext_losses(tmp_path):
    run = tmp_path / "run"
    assert main(quick_args(run, saved_quick_prompter(tmp_path))) == 0
    steps = [record for record in read_metrics(run) if "loss/qa" in record]
    assert [record["step"] for record in steps] == [1, 2, 3, 4]
    losses = {f"loss/{task}" for task in ("vtc", "vtm", "mlm", "pem")}
    assert losses | {"dM/dl/pem"} <= set(steps[-1])
    assert any("meta/L_pri" in record for record in steps)  # meta steps ran (every 2nd)
    results = json.loads((run / "results.json").read_text())
    assert results["selection"]["metric"] == "val/accuracy"
    for which in ("last", "best"):
        assert results[which]["test/num_items"] == QA_DATA["num_test"]
        assert 0.0 <= results[which]["test/accuracy"] <= 100.0


def test_quick_recipe_on_two_fsdp_ranks(tmp_path):
    # generated here first: two ranks generating the same dataset at once would collide
    cached_synthetic_qa(question="colour", num_frames=4, size=32, seed=0, **QA_DATA)
    run = tmp_path / "run"
    fsdp = {"Distributed.strategy": "'fsdp'"}
    spawn_local_ranks(cli_worker, 2, quick_args(run, saved_quick_prompter(tmp_path), **fsdp))

    assert latest_sharded(run / "checkpoints" / "last").name == f"step-{SHRINK['train.steps']:08d}"
    steps = [record for record in read_metrics(run) if "loss/pem" in record]
    assert [record["step"] for record in steps] == [1, 2, 3, 4]
    (test,) = [record for record in read_metrics(run) if "test/accuracy" in record][-1:]
    assert test["test/num_items"] == QA_DATA["num_test"]  # the two ranks' shares, once each


def test_quick_recipe_without_a_prompter_leaves_pem_out(tmp_path, caplog):
    bindings = quick_args(tmp_path / "run", None)[4:]
    configure(["gin/alpro_quick.gin"], [], bindings)
    with caplog.at_level(logging.WARNING):
        _, recipe = build.read_recipe()
    assert recipe.loss_source.tasks == ("qa", "vtc", "vtm", "mlm")
    assert "PEM is left out" in caplog.text


def test_msvd_qa_recipe_finds_every_official_key_and_builds_the_prompter(tmp_path, capsys):
    """alpro_pretrain.pt at the tiny sizes (pre-trained on 2 frames, fine-tuned on 3) through
    tools/inspect_checkpoint.py, with a prompter file and its entity list."""
    state = random_state_dict(pretrain_shapes(len(ENTITIES), **TINY_OFFICIAL | {"frames": 2}))
    checkpoint = tmp_path / "alpro_pretrain.pt"
    torch.save(state, checkpoint)
    files = prompter_files(tmp_path / "prompter")
    (tmp_path / "shards").mkdir()
    sizes = {k: v for k, v in TINY.items() if k not in ("vocab_size", "num_frames", "image_size")}
    bindings = [f"--Alpro.{key}={value}" for key, value in sizes.items() if key != "patch_size"]
    bindings += [
        f"--DATA_DIR={tmp_path / 'shards'}",
        f"--VOCAB={files.vocab}",
        f"--PROMPTER_CHECKPOINT={files.checkpoint}",
        f"--ENTITIES={files.entities}",
        f"--NUM_ENTITIES={len(ENTITIES)}",
        f"--NUM_FRAMES={FRAMES}",
        f"--IMAGE_SIZE={SIZE}",
        f"--PATCH_SIZE={PATCH}",
        "--Alpro.num_answers=7",
    ]
    arguments = ["--gin", "gin/alpro_msvd_qa.gin", "--checkpoint", str(checkpoint), *bindings]
    assert inspect_main(arguments) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["unexpected"] == []
    assert sorted(report["missing"]) == [
        "classifier.0.bias",
        "classifier.0.weight",
        "classifier.2.bias",
        "classifier.2.weight",
    ]
    assert set(report["adapted"]) == {
        "text_encoder.bert.embeddings.position_ids",
        "visual_encoder.model.time_embed",
        "temp",
    }
    assert all(
        key.startswith(("prompter.", "visual_encoder.model.head.")) for key in report["ignored"]
    )
