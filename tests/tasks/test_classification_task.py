"""Classification's ``topk`` against the model's classes: refused when the recipe is built, with
the binding named, not at the first evaluation."""

import gin
import pytest
import torch
from torch import nn

import meltr.train.configurables  # noqa: F401  (the gin registrations)
from meltr.backbones.resnet import CifarResNet
from meltr.tasks.classification import Classification
from meltr.train.build import build, read_recipe
from meltr.train.config import ConfigError, parse_gin


def test_topk_larger_than_the_classes_is_refused_naming_the_binding():
    with pytest.raises(ValueError, match=r"Classification\.topk = \(1, 5\).*3 classes.*\(1,\)"):
        Classification(topk=(1, 5)).check_model(CifarResNet(num_classes=3, blocks_per_stage=1))
    Classification(topk=(1, 3)).check_model(CifarResNet(num_classes=3, blocks_per_stage=1))


def test_a_model_without_num_classes_is_left_to_the_evaluation():
    Classification(topk=(1, 5)).check_model(nn.Linear(2, 3))


def test_evaluation_scores_the_topk_the_check_lets_through():
    model = CifarResNet(num_classes=3, blocks_per_stage=1)
    task = Classification(topk=(1, 3))
    task.check_model(model)
    batch = {"image": torch.randn(4, 3, 8, 8), "label": torch.tensor([0, 1, 2, 0])}
    metrics = task.evaluate(model, lambda view: [batch], torch.device("cpu"), "val")
    assert metrics["val/top3"] == 100.0 and 0.0 <= metrics["val/top1"] <= 100.0


@pytest.mark.parametrize(("classes", "refused"), [(3, True), (5, False)])
def test_the_image_recipe_is_refused_when_built(classes, refused, tmp_path):
    bindings = [
        f"NUM_CLASSES = {classes}",
        f"DATA_DIR = '{tmp_path}'",
        "CifarResNet.blocks_per_stage = 1",
    ]
    parse_gin(["gin/resnet32_images.gin"], bindings)
    try:
        settings, recipe = read_recipe()
        if refused:
            with pytest.raises(ConfigError, match=r"Recipe\.task = Classification: .*topk"):
                build(settings, recipe)
        else:
            assert build(settings, recipe).task.topk == (1, 5)
    finally:
        gin.clear_config()
