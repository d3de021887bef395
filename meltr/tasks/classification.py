"""Classification (images, videos): top-k accuracy over a split, with optional view averaging."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from meltr.metrics.classification import topk_accuracy
from meltr.tasks.common import (
    ItemCounts,
    check_views,
    concat_over_ranks,
    eval_mode,
    sum_over_views,
    to_device,
)


class Classification:
    """Top-k accuracy (percent) of ``model(mode="classify", **inputs)["logits"]`` against
    ``batch["label"]``; ``input_keys`` are the batch keys fed to the model. With ``views > 1``
    the softmax probabilities of the views are averaged. Selects on ``top1``, higher is better.
    ``check_model`` refuses, when the recipe is built, a ``topk`` the model's classes cannot fill.
    """

    selection_metric = "top1"
    higher_is_better = True

    def __init__(self, input_keys: tuple[str, ...] = ("image",), topk: tuple[int, ...] = (1, 5)):
        if not topk or any(not isinstance(k, int) or k < 1 for k in topk):
            raise ValueError(f"topk must be positive integers, got {topk!r}")
        self.input_keys, self.topk = tuple(input_keys), tuple(topk)

    def check_model(self, model: nn.Module) -> None:
        """ValueError naming ``Classification.topk`` when a k exceeds the model's ``num_classes``
        attribute (a top-k of C classes needs k <= C); a model without the attribute is not
        checked here (``topk_accuracy`` refuses it at the first evaluation)."""
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            return
        too_large = [k for k in self.topk if k > num_classes]
        if too_large:
            fits = tuple(k for k in self.topk if k <= num_classes) or (1,)
            raise ValueError(
                f"Classification.topk = {self.topk} asks for top-{max(too_large)} accuracy, but "
                f"the model has {num_classes} classes ({type(model).__name__}.num_classes); "
                f"bind Classification.topk = {fits}"
            )

    @torch.no_grad()
    def _scores(
        self, model: nn.Module, batches: Iterable[Mapping], device: torch.device
    ) -> tuple[Tensor, Tensor, ItemCounts]:
        probabilities, labels, counts = [], [], ItemCounts()
        for batch in batches:
            counts.add(batch, "label")
            logits = model(mode="classify", **to_device(batch, self.input_keys, device))["logits"]
            probabilities.append(logits.float().softmax(dim=1).cpu())
            labels.append(batch["label"])
        return (*concat_over_ranks(probabilities, labels), counts)

    def evaluate(
        self,
        model: nn.Module,
        batches: Callable[[int | None], Iterable[Mapping]],
        device: torch.device,
        split: str,
        views: int = 1,
    ) -> dict[str, float]:
        """``<split>/top<k>`` for each k, ``<split>/num_items``, ``<split>/num_corrupt``."""
        check_views(views, supports_views=True, task="classification")
        with eval_mode(model):
            total, labels, counts = sum_over_views(
                lambda view: self._scores(model, batches(view), device), views, "items"
            )
        metrics = topk_accuracy(total, labels, self.topk)
        return {f"{split}/{name}": value for name, value in metrics.items()} | counts.metrics(split)
