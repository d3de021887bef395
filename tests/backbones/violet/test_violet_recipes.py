"""The Violet recipes through the command-line tools: the quick QA recipes train end to end (one
process, and two FSDP ranks), and the release recipes' checkpoint loader reports only the task
heads missing for a state dict in the official layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from official_violet import random_state_dict, violet_shapes
from tiny_recipe import cli_worker, recipe_environment  # noqa: F401 (a fixture)
from violet_recipe_args import DATASET, SHRINK, quick_args
from violet_tiny import TINY, TINY_OFFICIAL

from meltr.data.synthetic.video_qa import COLOUR_ANSWERS, generate_synthetic_qa
from meltr.train.cli import main
from meltr.train.distributed import spawn_local_ranks
from meltr.train.inspect_cli import main as inspect_main
from meltr.train.run_log import read_metrics
from meltr.train.sharded import latest_sharded

pytestmark = pytest.mark.usefixtures("recipe_environment")


def test_quick_recipe_generates_its_dataset_and_trains_with_meltr(tmp_path):
    run = tmp_path / "run"
    assert main(quick_args("gin/violet_quick.gin", run)) == 0

    (dataset,) = (tmp_path / "cache").glob("synthetic-qa-*")
    assert (dataset / "answers.txt").read_text().split() == list(COLOUR_ANSWERS)
    steps = [record for record in read_metrics(run) if "loss/qa" in record]
    assert [record["step"] for record in steps] == [1, 2, 3, 4]
    assert {"loss/vtm", "loss/mtm", "loss/mvm", "dM/dl/qa"} <= set(steps[-1])
    assert any("meta/L_pri" in record for record in steps)  # meta steps ran (every 2nd)
    results = json.loads((run / "results.json").read_text())
    assert results["selection"]["metric"] == "val/accuracy"  # the generated val split
    for which in ("last", "best"):
        assert results[which]["test/num_items"] == DATASET["num_test"]
        assert results[which]["test/num_out_of_vocabulary"] == 0.0
        assert 0.0 <= results[which]["test/accuracy"] <= 100.0
    evaluations = [record for record in read_metrics(run) if "val/accuracy" in record]
    assert evaluations[-1]["val/num_items"] == DATASET["num_val"]


def test_quick_multiple_choice_recipe_on_two_fsdp_ranks(tmp_path):
    data = generate_synthetic_qa(
        tmp_path / "direction", question="direction", **{k: v for k, v in DATASET.items()}
    )
    run = tmp_path / "run"
    args = quick_args(
        "gin/violet_quick_direction.gin", run, data, **{"Distributed.strategy": "'fsdp'"}
    )
    spawn_local_ranks(cli_worker, 2, args)

    assert latest_sharded(run / "checkpoints" / "last").name == f"step-{SHRINK['train.steps']:08d}"
    (test,) = [record for record in read_metrics(run) if "test/accuracy" in record][-1:]
    assert test["test/num_items"] == DATASET["num_test"]  # the two ranks' shares, once each
    assert 0.0 <= test["test/accuracy"] <= 100.0


def official_file(tmp_path: Path, heads_extra=()) -> Path:
    """A ``ckpt_violet_pretrain.pt``-layout state dict (position_ids included) at TINY sizes."""
    state = random_state_dict(violet_shapes(**TINY_OFFICIAL, heads_extra=heads_extra))
    path = tmp_path / "ckpt_violet_pretrain.pt"
    torch.save(state, path)
    return path


def tiny_release_bindings(tmp_path: Path) -> list[str]:
    """The release recipes at TINY sizes: a 40-token vocabulary (specials first), an empty
    DATA_DIR (inspection reads no data)."""
    vocab = tmp_path / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab.write_text("\n".join(specials + [f"w{i}" for i in range(TINY["vocab_size"] - 5)]))
    (tmp_path / "shards").mkdir()
    sizes = {key: value for key, value in TINY.items() if key != "vocab_size"}
    bindings = [f"--Violet.{key}={value}" for key, value in sizes.items()]
    return [f"--DATA_DIR={tmp_path / 'shards'}", f"--VOCAB={vocab}", *bindings]


@pytest.mark.parametrize(
    "recipe, missing_head",
    [
        ("gin/violet_msrvtt_retrieval.gin", None),  # fc, fc_mtm, fc_mvm are all in the file
        ("gin/violet_tgif_frame.gin", "fc_oe."),
        ("gin/violet_tgif_action.gin", "fc_mc."),  # MELTR's fresh fc_mc
    ],
)
def test_release_recipes_find_every_official_key(tmp_path, capsys, recipe, missing_head):
    checkpoint = official_file(tmp_path)
    extra = {"gin/violet_tgif_frame.gin": ["--Violet.num_answers=7"]}.get(recipe, [])
    arguments = ["--gin", recipe, "--checkpoint", str(checkpoint)]
    assert inspect_main(arguments + tiny_release_bindings(tmp_path) + extra) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["unexpected"] == []
    assert report["adapted"] == {
        "enc_txt.emb_txt.position_ids": "dropped (buffer recomputed by the model)"
    }
    if missing_head is None:
        assert report["missing"] == []
    else:
        assert report["missing"] and all(k.startswith(missing_head) for k in report["missing"])
        assert sorted(report["missing"]) == sorted(
            f"{missing_head}{suffix}" for suffix in ("1.weight", "1.bias", "3.weight", "3.bias")
        )
    assert len(report["loaded"]) == len(violet_shapes(**TINY_OFFICIAL)) - 1
