"""CIFAR ResNet: shapes and size of ResNet32, option-A shortcuts, the three losses against their
formulas written here, the state-dict loader's report."""

import pytest
import torch
import torch.nn.functional as F

from meltr.backbones.resnet import CifarResNet, ImageClassificationLoss, load_resnet_checkpoint
from meltr.backbones.resnet.model import BasicBlock


def test_resnet32_has_the_papers_size_and_units():
    model = CifarResNet(num_classes=10)
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convolutions) + 1 == 32  # 6n + 1 convolutions and the classifier, n = 5
    heads = sum(p.numel() for p in model.rotation.parameters())
    assert round((sum(p.numel() for p in model.parameters()) - heads) / 1e6, 2) == 0.46
    assert [len(stage) for stage in model.fsdp_units()] == [5, 5, 5]
    out = model(mode="classify", image=torch.randn(2, 3, 32, 32))["logits"]
    assert out.shape == (2, 10)
    assert model(mode="rotation", image=torch.randn(2, 3, 32, 32))["logits"].shape == (2, 4)


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    block = BasicBlock(4, 8, stride=2)
    x = torch.randn(2, 4, 6, 6)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (2, 8, 3, 3)
    torch.testing.assert_close(shortcut[:, 2:6], x[:, :, ::2, ::2])
    assert torch.equal(shortcut[:, :2], torch.zeros(2, 2, 3, 3))
    assert torch.equal(shortcut[:, 6:], torch.zeros(2, 2, 3, 3))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = CifarResNet(num_classes=5, blocks_per_stage=1).double()
    batch = {"image": torch.randn(6, 3, 8, 8, dtype=torch.float64), "label": torch.arange(6) % 5}
    return model.eval(), batch  # eval: BatchNorm uses running statistics, so passes compare


def test_losses_match_their_formulas(tiny):
    model, batch = tiny
    torch.manual_seed(3)
    losses = ImageClassificationLoss(("ce", "mixup", "rotation"), mixup_alpha=0.4)(model, batch)

    def logits(images, mode="classify"):
        return model(mode=mode, image=images)["logits"]

    image, label = batch["image"], batch["label"]
    torch.manual_seed(3)  # the same global draws, in the loss source's order
    lam = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4)).sample().double()
    partner = torch.randperm(6)
    turns = torch.randint(4, (6,))
    mixed = lam * image + (1 - lam) * image[partner]
    expected_mixup = lam * F.cross_entropy(logits(mixed), label) + (1 - lam) * F.cross_entropy(
        logits(mixed), label[partner]
    )
    rotated = torch.stack(
        [torch.rot90(x, int(k), (1, 2)) for x, k in zip(image, turns, strict=True)]
    )
    torch.testing.assert_close(losses["ce"], F.cross_entropy(logits(image), label))
    torch.testing.assert_close(losses["mixup"], expected_mixup)
    torch.testing.assert_close(
        losses["rotation"], F.cross_entropy(logits(rotated, "rotation"), turns)
    )
    assert list(losses) == ["ce", "mixup", "rotation"]


def test_ce_chance_level_is_the_loss_of_uniform_predictions(tiny):
    model, batch = tiny
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()  # every logit 0: the uniform distribution over 5 classes
    with torch.no_grad():
        uniform = ImageClassificationLoss(("ce",), num_classes=5)(model, batch)["ce"]
    chance = ImageClassificationLoss(("ce",), num_classes=5).chance_levels(batch_size=6)
    assert chance == {"ce": pytest.approx(uniform.item())}
    assert ImageClassificationLoss(("ce",)).chance_levels(6) == {}
    with pytest.raises(ValueError, match="num_classes"):
        ImageClassificationLoss(("ce",), num_classes=1)


@pytest.mark.parametrize("tasks", [("mixup", "ce"), ("ce", "jigsaw"), ("ce", "mixup", "mixup"), ()])
def test_bad_task_lists_are_refused(tasks):
    with pytest.raises(ValueError, match="tasks"):
        ImageClassificationLoss(tasks)


def test_loader_reports_every_key_and_refuses_shape_mismatches(tmp_path):
    source = CifarResNet(num_classes=5, blocks_per_stage=1)
    state = {f"module.{k}": v for k, v in source.state_dict().items() if "rotation" not in k}
    state["module.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "model.pt")
    model = CifarResNet(num_classes=5, blocks_per_stage=1)
    report = load_resnet_checkpoint(model, tmp_path / "model.pt")
    assert report.missing == ["rotation.bias", "rotation.weight"]
    assert report.unexpected == ["extra.weight"]
    for key, value in source.state_dict().items():
        if "rotation" not in key:
            assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="classifier.weight.*\\(5, 64\\).*\\(7, 64\\)"):
        load_resnet_checkpoint(
            CifarResNet(num_classes=7, blocks_per_stage=1), tmp_path / "model.pt"
        )
