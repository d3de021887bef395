"""Loss source for fine-tuning All-in-one on text-video retrieval with MELTR.

Exact in a data-parallel run (see ``meltr.backbones.losses``): ``itc`` contrasts the features
gathered from all ranks, ``mlm`` divides by the mean masked-token count over ranks. ``vtm`` draws
its hard negatives within each rank's slice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.losses import (
    check_tasks,
    gather_across_ranks,
    masked_token_loss,
    require,
    symmetric_contrastive_loss,
)

PRIMARY_TASK = "itc"
AUXILIARY_TASKS = ("mlm", "vtm")


def sample_hard_negatives(similarity: Tensor, temperature: float) -> Tensor:
    """For each row ``i`` of the ``[B, B]`` similarity, draw a column ``j != i`` with probability
    ``softmax(similarity[i] / temperature)`` restricted to ``j != i``. Draws from the global
    torch RNG; returns int64 ``[B]``."""
    diagonal = torch.eye(similarity.shape[0], dtype=torch.bool, device=similarity.device)
    weights = torch.softmax((similarity / temperature).masked_fill(diagonal, float("-inf")), dim=1)
    return torch.multinomial(weights, 1).squeeze(1)


class AllInOneRetrievalLoss:
    """``loss_source(model, batch) -> {"itc": ..., <tasks[1:] in order>}`` for :class:`AllInOne`.

    - ``itc`` (primary): independent text-only and video-only passes, symmetric contrastive loss
      over in-batch pairs with cosine similarity / ``temperature``.
    - ``mlm``: one joint pass on ``batch["mlm_ids"]``, cross-entropy against ``mlm_labels``.
    - ``vtm``: one joint pass over 3B pairs: the B batch pairs (label 1), each video with a hard
      negative text and each text with a hard negative video (label 0), negatives drawn in
      proportion to the softmax of the (detached) itc similarity; 2-way cross-entropy on
      ``vtm_logits``. Needs B >= 2.

    Batch keys read: ``text_ids``, ``text_mask``, ``video``, and ``mlm_ids`` / ``mlm_labels`` for
    mlm. Randomness (vtm negatives, dropout) comes only from the global torch RNG.
    """

    def __init__(self, tasks: Iterable[str] = ("itc", "mlm"), temperature: float = 0.05) -> None:
        tasks = check_tasks(tasks, (PRIMARY_TASK,), AUXILIARY_TASKS)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.tasks = tasks
        self.temperature = temperature

    def chance_levels(self, batch_size: int) -> dict[str, float]:
        """The losses of a model that cannot tell pairs apart: ``itc`` = ln(batch size) (the
        contrastive loss over the global batch)."""
        return {"itc": math.log(batch_size)}

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        text_ids, text_mask, video = require(batch, "text_ids", "text_mask", "video")
        text_feat = model(mode="text", text_ids=text_ids, text_mask=text_mask)["text_feat"]
        video_feat = model(mode="video", video=video)["video_feat"]
        losses = {
            "itc": symmetric_contrastive_loss(
                gather_across_ranks(text_feat), gather_across_ranks(video_feat), self.temperature
            )
        }
        for task in self.tasks[1:]:
            if task == "mlm":
                losses["mlm"] = self._mlm(model, batch)
            else:
                similarity = (text_feat @ video_feat.T).detach()
                losses["vtm"] = self._vtm(model, text_ids, text_mask, video, similarity)
        return losses

    def _mlm(self, model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
        mlm_ids, mlm_labels, text_mask, video = require(
            batch, "mlm_ids", "mlm_labels", "text_mask", "video"
        )
        out = model(mode="joint", text_ids=mlm_ids, text_mask=text_mask, video=video)
        return masked_token_loss(out["mlm_logits"], mlm_labels)

    def _vtm(
        self,
        model: nn.Module,
        text_ids: Tensor,
        text_mask: Tensor,
        video: Tensor,
        similarity: Tensor,
    ) -> Tensor:
        batch_size = text_ids.shape[0]
        if batch_size < 2:
            raise ValueError(
                f"vtm needs at least 2 samples per batch for negatives, got {batch_size}"
            )
        negative_text = sample_hard_negatives(similarity.T, self.temperature)
        negative_video = sample_hard_negatives(similarity, self.temperature)
        own = torch.arange(batch_size, device=text_ids.device)
        text_index = torch.cat([own, negative_text, own])
        video_index = torch.cat([own, own, negative_video])
        out = model(
            mode="joint",
            text_ids=text_ids[text_index],
            text_mask=text_mask[text_index],
            video=video[video_index],
        )
        labels = torch.cat([torch.ones_like(own), torch.zeros_like(own), torch.zeros_like(own)])
        return F.cross_entropy(out["vtm_logits"], labels)
