"""The CIFAR ResNet at test size, for the backbone contract test (see
``meltr.backbones.contract``)."""

import torch

from meltr.backbones.contract import TinyBackbone
from meltr.backbones.resnet import CifarResNet, ImageClassificationLoss, load_resnet_checkpoint

CLASSES, SIZE = 5, 8


def _batch(generator: torch.Generator) -> dict:
    """4 normalised 8-pixel images with labels (the ImageLabel decoder's augmentation is not a
    backbone transform)."""
    return {
        "image": torch.randn(4, 3, SIZE, SIZE, generator=generator),
        "label": torch.randint(CLASSES, (4,), generator=generator),
    }


def tiny() -> TinyBackbone:
    return TinyBackbone(
        build=lambda: CifarResNet(num_classes=CLASSES, blocks_per_stage=1),
        loss_source=ImageClassificationLoss(("ce", "mixup", "rotation"), num_classes=CLASSES),
        batch=_batch,
        checkpoint_loader=load_resnet_checkpoint,
    )
