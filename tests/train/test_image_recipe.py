"""The image-only recipe (gin/resnet32_images.gin, shrunk) end to end: train with validation-split
selection, then evaluate and inspect its checkpoints with the same recipe."""

import json

import pytest
import torch

from meltr.data.synthetic.shape_images import generate_synthetic_images
from meltr.train.cli import main
from meltr.train.evaluate_cli import main as evaluate_main
from meltr.train.inspect_cli import main as inspect_main
from meltr.train.run_log import read_metrics


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return generate_synthetic_images(
        tmp_path_factory.mktemp("images"), num_train=64, num_val=24, num_test=24, size=16
    )


def shrunk(data_dir) -> list[str]:
    return [
        "--gin",
        "gin/resnet32_images.gin",
        f"--DATA_DIR={data_dir}",
        "--CifarResNet.blocks_per_stage=1",
        "--MetaLearner.meta_every=2",
        "--train_loader.num_workers=0",
        "--eval_loader.num_workers=0",
        "--train.batch_size=16",
        "--train.eval_batch_size=24",
        "--train.steps=6",
        "--train.eval_every=2",
        "--train.checkpoint_every=3",
        "--train.log_every=2",
    ]


def test_image_recipe_trains_selects_on_val_and_evaluates(images, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*shrunk(images["root"]), "--output", str(run)]) == 0
    out = capsys.readouterr().out
    assert "final test metrics" in out and "best val/top1" in out

    evaluations = [r for r in read_metrics(run) if "val/top1" in r]
    assert [r["step"] for r in evaluations] == [2, 4, 6]
    assert all({"test/top1", "test/top5", "test/num_items"} <= r.keys() for r in evaluations)
    results = json.loads((run / "results.json").read_text())
    best = max(evaluations, key=lambda r: (r["val/top1"], -r["step"]))  # first best wins
    assert results["selection"] == {
        "metric": "val/top1",
        "higher_is_better": True,
        "best_step": best["step"],
        "best_value": best["val/top1"],
    }
    assert results["last"]["test/top1"] == evaluations[-1]["test/top1"]
    assert results["best"]["test/top1"] == best["test/top1"]
    assert results["last"]["test/num_items"] == 24

    # best.pt evaluated alone reproduces the test metrics the run logged at the selected step.
    recipe = shrunk(images["root"])[:4]
    best_checkpoint = run / "checkpoints" / "best.pt"
    assert evaluate_main([*recipe, "--checkpoint", str(best_checkpoint)]) == 0
    evaluated = json.loads((run / "checkpoints" / "best.test-1views.json").read_text())
    assert evaluated["test/top1"] == pytest.approx(results["best"]["test/top1"])

    capsys.readouterr()
    assert inspect_main([*recipe, "--checkpoint", str(run / "checkpoints" / "last.pt")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["missing"] == [] and report["unexpected"] == []
    assert report["model"] == "CifarResNet"


def test_single_task_and_multi_task_baselines_run_through_the_same_recipe(images, tmp_path):
    for baseline, weights in (("single_task", [1.0, 0.0, 0.0]), ("mtl", [1.0, 1.0, 1.0])):
        run = tmp_path / baseline
        args = [*shrunk(images["root"]), "--gin", f"gin/baselines/{baseline}.gin"]
        assert main([*args, "--output", str(run), "--train.steps=2"]) == 0
        record = [r for r in read_metrics(run) if "dM/dl/ce" in r][-1]
        assert [record[f"dM/dl/{t}"] for t in ("ce", "mixup", "rotation")] == weights
        assert "meta/L_pri" not in record


def test_an_empty_data_directory_is_enough_to_inspect(tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    from meltr.backbones.resnet import CifarResNet

    torch.save(CifarResNet(num_classes=10, blocks_per_stage=1).state_dict(), weights)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["--gin", "gin/resnet32_images.gin", f"--DATA_DIR={empty}"]
    args += ["--CifarResNet.blocks_per_stage=1", "--checkpoint", str(weights)]
    assert inspect_main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["missing"] == [] and len(report["loaded"]) == len(torch.load(weights))
