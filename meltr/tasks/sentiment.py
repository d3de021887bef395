"""Multimodal sentiment analysis (CMU-MOSI): a real-valued sentiment score per item, scored with
the MMSA metrics of ``meltr.metrics.sentiment.sentiment_metrics``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from meltr.metrics.sentiment import sentiment_metrics
from meltr.tasks.common import ItemCounts, check_views, concat_over_ranks, eval_mode, to_device


class Sentiment:
    """Sentiment regression: per batch ``text = model(mode="text", **text inputs)``, ``video =
    model(mode="video", **video inputs)``, then ``model(mode="regress", text=text,
    video=video)["prediction"]`` ``[B]`` against ``batch["label"]`` (scores in [-3, 3]).

    Metrics (``sentiment_metrics``' names and units): ``<split>/mae``, ``corr``, ``acc7``,
    ``acc5``, ``acc2_nonzero``, ``f1_nonzero``, ``acc2_haszero``, ``f1_haszero`` (accuracies and
    F1 in percent), ``num_items``, ``num_corrupt``.

    Selects on ``mae``, lower is better: it is the quantity the regression loss descends, it is
    continuous (on MOSI's 229 validation clips one clip moves a binary accuracy by 0.44 points,
    so accuracies and F1 pick checkpoints by noise), and it does not hinge on the sign
    threshold that separates the binary variants.
    """

    selection_metric = "mae"
    higher_is_better = False

    def __init__(
        self,
        text_keys: tuple[str, ...] = ("text_ids", "text_mask"),
        video_keys: tuple[str, ...] = ("features", "feature_mask"),
    ) -> None:
        self.text_keys, self.video_keys = tuple(text_keys), tuple(video_keys)

    @torch.no_grad()
    def _predictions(
        self, model: nn.Module, batches: Iterable[Mapping], device: torch.device
    ) -> tuple[Tensor, Tensor, ItemCounts]:
        predictions, labels, counts = [], [], ItemCounts()
        for batch in batches:
            counts.add(batch, "label")
            text = model(mode="text", **to_device(batch, self.text_keys, device))
            video = model(mode="video", **to_device(batch, self.video_keys, device))
            prediction = model(mode="regress", text=text, video=video)["prediction"]
            predictions.append(prediction.float().cpu())
            labels.append(batch["label"].float())
        return (*concat_over_ranks(predictions, labels), counts)

    def evaluate(
        self,
        model: nn.Module,
        batches: Callable[[int | None], Iterable[Mapping]],
        device: torch.device,
        split: str,
        views: int = 1,
    ) -> dict[str, float]:
        """The split's metrics (class docstring); ``batches(None)`` is one pass over it."""
        check_views(views, supports_views=False, task="sentiment")
        with eval_mode(model):
            predictions, labels, counts = self._predictions(model, batches(None), device)
        metrics = sentiment_metrics(predictions, labels)
        return {f"{split}/{name}": value for name, value in metrics.items()} | counts.metrics(split)
