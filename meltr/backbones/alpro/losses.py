"""Loss source for fine-tuning ALPRO with MELTR: video QA (or VTC alone, the prompter's
pre-training) and ALPRO's four pretext losses, VTC, VTM, MLM and PEM.

Exact in a data-parallel run (``meltr.backbones.losses``): VTC gathers every rank's features and
computes the global loss; qa, mlm and pem divide by the mean count over ranks. VTM draws its hard
negatives within each rank's slice, as the release does, and averages over the slice's 3 b pairs
(equal slices, so the mean over ranks is the global mean).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.alpro.prompter import EntityPrompter
from meltr.backbones.losses import (
    answer_loss,
    check_tasks,
    gather_across_ranks,
    masked_token_loss,
    mean_over_global_count,
    require,
    symmetric_contrastive_loss,
)

logger = logging.getLogger(__name__)

PRIMARY_TASKS = ("qa", "vtc")
AUXILIARY_TASKS = ("vtc", "vtm", "mlm", "pem")
FUSED_TASKS = ("qa", "vtm", "pem")  # tasks that read the fusion pass of the batch's own pairs


def hard_negatives(similarity: Tensor) -> Tensor:
    """For each row ``i`` of ``similarity`` ``[B, B]``, one column ``j != i`` drawn with
    probability ``softmax_j(similarity[i, j])`` over ``j != i`` (global torch RNG; no gradient)
    -> int64 ``[B]``."""
    weights = similarity.detach().float().clone()
    weights.fill_diagonal_(-math.inf)
    return torch.multinomial(weights.softmax(dim=1), 1).squeeze(1)


def vtm_loss(positive_logits: Tensor, negative_logits: Tensor) -> Tensor:
    """2-way cross-entropy over ``B`` positive pairs (label 1) and ``2 B`` negative pairs (label
    0): ``positive_logits`` ``[B, 2]``, ``negative_logits`` ``[2 B, 2]``, averaged over 3 B."""
    logits = torch.cat([positive_logits, negative_logits])
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[: positive_logits.shape[0]] = 1
    return F.cross_entropy(logits, labels)


def pem_loss(entity_logits: Tensor, soft_labels: Tensor, keep: Tensor) -> Tensor:
    """Soft-label cross-entropy ``-sum_e q_e log softmax(z)_e`` of ``entity_logits`` ``[B, E]``
    against ``soft_labels`` ``[B, E]``, averaged over the items where ``keep`` (bool ``[B]``) is
    set (0 when none is; in a data-parallel run divided by the mean such count over ranks)."""
    if soft_labels.shape != entity_logits.shape or keep.shape != entity_logits.shape[:1]:
        raise ValueError(
            f"PEM: soft labels {tuple(soft_labels.shape)} and keep {tuple(keep.shape)} do not "
            f"match the entity logits {tuple(entity_logits.shape)} (is the model's num_entities "
            "the prompter's entity count?)"
        )
    per_item = -(soft_labels * entity_logits.log_softmax(dim=1)).sum(dim=1)
    total = torch.where(keep, per_item, torch.zeros_like(per_item)).sum()
    return mean_over_global_count(total, keep.sum())


class AlproLoss:
    """``loss_source(model, batch) -> {task: scalar}`` for :class:`Alpro`, tasks in the order of
    ``tasks``: the first is the primary task (``qa`` for video QA, ``vtc`` for contrastive
    pre-training), the others auxiliary (from ``vtc``, ``vtm``, ``mlm``, ``pem``).

    One video pass and one text pass (the question) serve every task; one fusion pass over the
    batch's own pairs serves qa, vtm's positives and pem.

    - ``qa``: cross-entropy of the ``classifier`` at ``answer_index`` (items with -1, an answer
      outside the vocabulary, are left out, see ``answer_loss``).
    - ``vtc``: symmetric in-batch contrastive loss of ``text_feat`` and ``video_feat`` over the
      global batch, logits divided by the learnt temperature.
    - ``vtm``: ``itm_head`` on the B positive pairs, on B pairs (text, hard negative video) and
      B pairs (hard negative text, video), negatives drawn by :func:`hard_negatives` from the
      similarities VTC uses; 2-way cross-entropy. Needs B >= 2.
    - ``mlm``: ``mlm_ids`` (``MaskTokens``) fused with the video; cross-entropy at
      ``mlm_labels``.
    - ``pem``: ``mpm_head`` on the mean fused patch token of ``pem_region``
      (``EntityCrop``) against the prompter's soft labels of ``pem_crop``.

    ``pem`` needs ``prompter``; without one (None) it is left out of ``tasks`` with a warning.
    Randomness (dropout, stochastic depth, hard negatives) comes only from the global torch RNG.
    """

    def __init__(
        self,
        tasks: Iterable[str] = ("qa", "vtc", "vtm", "mlm", "pem"),
        prompter: EntityPrompter | None = None,
    ) -> None:
        tasks = check_tasks(tasks, PRIMARY_TASKS, AUXILIARY_TASKS)
        if "pem" in tasks and prompter is None:
            tasks = tuple(task for task in tasks if task != "pem")
            logger.warning(
                "ALPRO: PEM is left out, no prompter checkpoint was given (load_prompter's "
                "checkpoint; PROMPTER_CHECKPOINT in the alpro recipes); training on %s",
                ", ".join(tasks),
            )
        self.tasks = tasks
        self.prompter = prompter

    def chance_levels(self, batch_size: int) -> dict[str, float]:
        """vtc: ln(batch size); vtm: the cross-entropy of predicting 1/3 for every pair."""
        return {"vtc": math.log(batch_size), "vtm": -(math.log(1 / 3) + 2 * math.log(2 / 3)) / 3}

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        video, text_ids, text_mask = require(batch, "video", "text_ids", "text_mask")
        video_out = model(mode="video", video=video)
        text_out = model(mode="text", text_ids=text_ids, text_mask=text_mask)
        temperature = None
        if "vtc" in self.tasks or "vtm" in self.tasks:
            temperature = model(mode="temperature")["temperature"]
        fused = None
        if any(task in self.tasks for task in FUSED_TASKS):
            fused = model(
                mode="fusion",
                text_embeds=text_out["text_embeds"],
                text_mask=text_mask,
                video_embeds=video_out["video_embeds"],
                region=require(batch, "pem_region")[0] if "pem" in self.tasks else None,
                answers="qa" in self.tasks,
            )
        losses: dict[str, Tensor] = {}
        for task in self.tasks:
            if task == "qa":
                (answer_index,) = require(batch, "answer_index")
                losses[task] = answer_loss(fused["answer_logits"], answer_index)
            elif task == "vtc":
                text_feat = gather_across_ranks(text_out["text_feat"])
                video_feat = gather_across_ranks(video_out["video_feat"])
                losses[task] = symmetric_contrastive_loss(text_feat, video_feat, temperature)
            elif task == "vtm":
                losses[task] = self._vtm(model, text_out, text_mask, video_out, fused, temperature)
            elif task == "mlm":
                mlm_ids, mlm_labels = require(batch, "mlm_ids", "mlm_labels")
                logits = model(
                    mode="mlm",
                    mlm_ids=mlm_ids,
                    text_mask=text_mask,
                    video_embeds=video_out["video_embeds"],
                )["mlm_logits"]
                losses[task] = masked_token_loss(logits, mlm_labels)
            else:
                (crop,) = require(batch, "pem_crop")
                soft_labels, keep = self.prompter.to(crop.device)(crop)
                losses[task] = pem_loss(fused["entity_logits"], soft_labels, keep)
        return losses

    @staticmethod
    def _vtm(
        model: nn.Module,
        text_out: Mapping[str, Tensor],
        text_mask: Tensor,
        video_out: Mapping[str, Tensor],
        fused: Mapping[str, Tensor],
        temperature: Tensor,
    ) -> Tensor:
        text_embeds, video_embeds = text_out["text_embeds"], video_out["video_embeds"]
        if text_embeds.shape[0] < 2:
            raise ValueError(f"vtm needs at least 2 pairs per batch, got {text_embeds.shape[0]}")
        with torch.no_grad():
            similarity = text_out["text_feat"] @ video_out["video_feat"].T / temperature
        negative_video = hard_negatives(similarity)  # one per text
        negative_text = hard_negatives(similarity.T)  # one per video
        negatives = model(
            mode="fusion",
            text_embeds=torch.cat([text_embeds, text_embeds[negative_text]]),
            text_mask=torch.cat([text_mask, text_mask[negative_text]]),
            video_embeds=torch.cat([video_embeds[negative_video], video_embeds]),
        )
        return vtm_loss(fused["itm_logits"], negatives["itm_logits"])
