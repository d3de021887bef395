"""Loss source for fine-tuning All-in-one on text-video retrieval with MELTR.

In a data-parallel run (a torch.distributed process group with several ranks, each holding an
equal slice of the global batch) the losses are computed so that their mean over ranks, and the
mean of their gradients, equal the single-process losses of the global batch: ``itc`` contrasts
the features gathered from all ranks, ``mlm`` divides by the mean masked-token count over ranks.
``vtm`` draws its hard negatives within each rank's slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
import torch.nn.functional as F
from torch import Tensor, nn

PRIMARY_TASK = "itc"
AUXILIARY_TASKS = ("mlm", "vtm")
IGNORE_INDEX = -100


def symmetric_contrastive_loss(text_feat: Tensor, video_feat: Tensor, temperature: float) -> Tensor:
    """Mean of the text->video and video->text cross-entropies over in-batch pairs.

    ``text_feat`` and ``video_feat`` are L2-normalised ``[B, P]``; pair ``i`` is the positive.
    """
    logits = text_feat @ video_feat.T / temperature
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def _data_parallel() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_across_ranks(features: Tensor) -> Tensor:
    """Every rank's ``features`` ``[b, ...]`` concatenated along dim 0 in rank order, with autograd
    (the backward sums each rank's gradient for this rank's rows). Every rank computes the same
    global loss from the result; summing here and averaging the gradients over ranks (FSDP/DDP)
    then gives exactly the single-process gradient. Equal shapes on all ranks; identity without a
    process group."""
    if not _data_parallel():
        return features
    return torch.cat(dist_autograd.all_gather(features), dim=0)


def masked_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over positions whose label is not -100 (0 when there are none).

    ``logits`` ``[B, L, V]``, ``labels`` int64 ``[B, L]``. In a data-parallel run the sum is
    divided by the mean masked-token count over ranks, so the mean of this loss over ranks is the
    token average over the global batch.
    """
    total = F.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    count = labels.ne(IGNORE_INDEX).sum().to(total.dtype)
    if not _data_parallel():
        return total / count.clamp(min=1)
    global_count = count.clone()
    dist.all_reduce(global_count)
    return total / (global_count.clamp(min=1) / dist.get_world_size())


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
        tasks = tuple(tasks)
        if not tasks or tasks[0] != PRIMARY_TASK:
            raise ValueError(
                f"tasks must start with the primary task {PRIMARY_TASK!r}, got {tasks}"
            )
        unknown = [t for t in tasks[1:] if t not in AUXILIARY_TASKS]
        if unknown:
            raise ValueError(
                f"unknown task(s) {unknown} in tasks={tasks}; known auxiliary tasks: "
                f"{AUXILIARY_TASKS}"
            )
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks contains duplicates: {tasks}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.tasks = tasks
        self.temperature = temperature

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        text_ids, text_mask, video = _require(batch, "text_ids", "text_mask", "video")
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
        mlm_ids, mlm_labels, text_mask, video = _require(
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


def _require(batch: Mapping[str, Tensor], *keys: str) -> list[Tensor]:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"batch lacks key(s) {missing}; it has {sorted(batch)}")
    return [batch[k] for k in keys]
