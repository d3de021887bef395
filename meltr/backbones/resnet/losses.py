"""Loss source for the image-only setting (paper appendix H): classification ``ce`` (primary),
``mixup`` (cross-entropy on mixed images, Zhang et al. 2018) and ``rotation`` (predict the rotation
of a rotated copy, Gidaris et al. 2018)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.losses import check_tasks, require

PRIMARY_TASK = "ce"
AUXILIARY_TASKS = ("mixup", "rotation")


def mixup_loss(model: nn.Module, image: Tensor, label: Tensor, alpha: float) -> Tensor:
    """``lambda * CE(f(x~), y) + (1 - lambda) * CE(f(x~), y[j])`` with ``x~ = lambda * x + (1 -
    lambda) * x[j]``, ``lambda ~ Beta(alpha, alpha)`` (one per batch) and ``j`` a random
    permutation of the batch; both drawn from the global torch RNG."""
    concentration = torch.tensor(float(alpha))
    weight = torch.distributions.Beta(concentration, concentration).sample().to(image.device)
    partner = torch.randperm(image.shape[0]).to(image.device)
    mixed = weight * image + (1 - weight) * image[partner]
    logits = model(mode="classify", image=mixed)["logits"]
    return weight * F.cross_entropy(logits, label) + (1 - weight) * F.cross_entropy(
        logits, label[partner]
    )


def rotate(image: Tensor, quarter_turns: Tensor) -> Tensor:
    """Each image ``[3, H, W]`` of the batch rotated counter-clockwise by ``quarter_turns[i]`` x 90
    degrees (square images)."""
    rotated = image.clone()
    for turns in range(1, 4):
        chosen = quarter_turns == turns
        rotated[chosen] = torch.rot90(image[chosen], turns, dims=(2, 3))
    return rotated


def rotation_loss(model: nn.Module, image: Tensor) -> Tensor:
    """Cross-entropy of the rotation head on a copy of the batch, each image rotated by 0, 90, 180
    or 270 degrees (drawn uniformly from the global torch RNG)."""
    if image.shape[-1] != image.shape[-2]:
        raise ValueError(f"rotation needs square images, got {tuple(image.shape[-2:])}")
    quarter_turns = torch.randint(4, (image.shape[0],)).to(image.device)
    logits = model(mode="rotation", image=rotate(image, quarter_turns))["logits"]
    return F.cross_entropy(logits, quarter_turns)


class ImageClassificationLoss:
    """``loss_source(model, batch) -> {"ce": ..., <tasks[1:] in order>}`` for a classifier with
    ``mode="classify"`` and (for ``rotation``) ``mode="rotation"`` heads, e.g. ``CifarResNet``.

    Batch keys read: ``image`` ``[B, 3, H, W]``, ``label`` int64 ``[B]``. Randomness (mixing
    weight and partners, rotations) comes only from the global torch RNG. ``num_classes`` (when
    given) sets the chance level of ``ce`` for the training-health check.
    """

    def __init__(
        self,
        tasks: Iterable[str] = ("ce", "mixup", "rotation"),
        mixup_alpha: float = 1.0,
        num_classes: int | None = None,
    ) -> None:
        tasks = check_tasks(tasks, (PRIMARY_TASK,), AUXILIARY_TASKS)
        if not mixup_alpha > 0:
            raise ValueError(f"mixup_alpha must be > 0, got {mixup_alpha}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"num_classes must be None or an integer >= 2, got {num_classes!r}")
        self.tasks, self.mixup_alpha, self.num_classes = tasks, mixup_alpha, num_classes

    def chance_levels(self, batch_size: int) -> dict[str, float]:
        """The losses of a classifier that predicts the uniform distribution: ``ce`` =
        ln(num_classes) (nothing when ``num_classes`` is not given; ``batch_size`` is unused)."""
        return {} if self.num_classes is None else {"ce": math.log(self.num_classes)}

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        image, label = require(batch, "image", "label")
        losses = {"ce": F.cross_entropy(model(mode="classify", image=image)["logits"], label)}
        for task in self.tasks[1:]:
            if task == "mixup":
                losses["mixup"] = mixup_loss(model, image, label, self.mixup_alpha)
            else:
                losses["rotation"] = rotation_loss(model, image)
        return losses
