"""Loss source for fine-tuning Violet with MELTR: retrieval, video QA and video classification.

Exact in a data-parallel run (``meltr.backbones.losses``) for the token-averaged losses (mtm,
mvm, qa): each divides by the mean count over ranks. ``vtm`` scores the B x B pairs of each rank's
slice (as the release, whose DataParallel splits the batch over GPUs, does); ``cls`` is a batch
mean (equal slices, so the mean over ranks is the global mean).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.losses import (
    IGNORE_INDEX,
    answer_loss,
    check_tasks,
    masked_token_loss,
    require,
)

PRIMARY_TASKS = ("vtm", "qa", "cls")
AUXILIARY_TASKS = ("vtm", "mtm", "mvm")


def vtm_loss(scores: Tensor, temperature: float) -> Tensor:
    """Cross-entropy over texts for each video: ``scores`` ``[B, B]`` (row text, column video,
    pair ``i`` the positive), ``CE(scores.T / temperature, arange(B))``."""
    targets = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores.T / temperature, targets)


def mvm_loss(mvm_logits: Tensor, vq: Tensor, mvm_mask: Tensor) -> Tensor:
    """Cross-entropy of ``mvm_logits`` ``[B, F, g, g, codes]`` at the dVAE codes ``vq``
    ``[B, F, g, g]`` over the cells where ``mvm_mask`` (bool, same shape) is set."""
    if vq.shape != mvm_logits.shape[:-1] or mvm_mask.shape != vq.shape:
        raise ValueError(
            f"vq {tuple(vq.shape)} and mvm_mask {tuple(mvm_mask.shape)} must both be "
            f"{tuple(mvm_logits.shape[:-1])} (batch, frames, token grid)"
        )
    labels = torch.where(mvm_mask.bool(), vq.long(), IGNORE_INDEX)
    return masked_token_loss(mvm_logits.flatten(1, 3), labels.flatten(1))


class VioletLoss:
    """``loss_source(model, batch) -> {task: scalar}`` for :class:`Violet`, tasks in the order of
    ``tasks``; the first is the primary task (``vtm`` for retrieval, ``qa`` for video QA, ``cls``
    for video classification), the others auxiliary (from ``vtm``, ``mtm``, ``mvm``).

    - ``vtm``: the VTM logit of every (text, video) pair of the batch, B x B cross passes
      (``mode="score"``); cross-entropy over the texts for each video, logits / ``temperature``.
      Needs B >= 2.
    - ``qa``: multiple choice when the batch has ``option_ids`` (one pass per option, CE over
      the options), else open-ended (CE over the answer vocabulary); ``answer_index`` -1 items
      (answer outside the vocabulary) are left out of the average, see :func:`answer_loss`.
    - ``cls``: cross-entropy of ``mode="classify"`` at ``label`` (video only, no text).
    - ``mtm`` and ``mvm``: one ``mode="pretext"`` pass over the masked text (``mtm_ids``, when
      ``mtm`` is a task, else ``text_ids``, else the empty text) and the masked video
      (``masked_video``, when ``mvm`` is a task); ``mtm``: CE at ``mtm_labels``; ``mvm``: CE at
      the dVAE codes ``vq`` on the cells of ``mvm_mask``.

    The other tasks see the clean ``video``. ``masked_video_for_all=True`` feeds
    ``masked_video`` to every task instead, as the release does; it is off by default because
    the target task is evaluated on clean frames, so training it on frames with a third of
    their cells blacked out optimises another objective than the one MELTR meta-learns
    towards. Batch keys: ``video``; with text ``text_ids`` / ``text_mask``; ``option_ids`` /
    ``option_mask`` and ``answer_index`` (qa); ``label`` (cls); ``mtm_ids`` / ``mtm_labels``
    (``MaskTextTokens``); ``masked_video`` / ``mvm_mask`` (``BlockwiseVideoMask``) and ``vq``.
    Randomness (dropout, stochastic depth) comes only from the global torch RNG.
    """

    def __init__(
        self,
        tasks: Iterable[str] = ("vtm", "mtm", "mvm"),
        temperature: float = 0.05,
        masked_video_for_all: bool = False,
    ) -> None:
        tasks = check_tasks(tasks, PRIMARY_TASKS, AUXILIARY_TASKS)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.tasks = tasks
        self.temperature = temperature
        self.masked_video_for_all = masked_video_for_all

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        clean_key = "masked_video" if self.masked_video_for_all else "video"
        pretext_key = "masked_video" if "mvm" in self.tasks else clean_key
        tokens: dict[str, Tensor] = {}

        def video_tokens(key: str) -> Tensor:
            if key not in tokens:
                (video,) = require(batch, key)
                tokens[key] = model(mode="video", video=video)["video_tokens"]
            return tokens[key]

        losses: dict[str, Tensor] = {}
        pretext = None
        for task in self.tasks:
            if task == "vtm":
                losses[task] = self._vtm(model, batch, video_tokens(clean_key))
            elif task == "qa":
                losses[task] = self._qa(model, batch, video_tokens(clean_key))
            elif task == "cls":
                (label,) = require(batch, "label")
                out = model(mode="classify", video_tokens=video_tokens(clean_key))
                losses[task] = F.cross_entropy(out["logits"], label)
            else:
                if pretext is None:
                    pretext = self._pretext(model, batch, video_tokens(pretext_key))
                if task == "mtm":
                    (labels,) = require(batch, "mtm_labels")
                    losses[task] = masked_token_loss(pretext["mtm_logits"], labels)
                else:
                    vq, mvm_mask = require(batch, "vq", "mvm_mask")
                    losses[task] = mvm_loss(pretext["mvm_logits"], vq, mvm_mask)
        return losses

    def _vtm(self, model: nn.Module, batch: Mapping[str, Tensor], tokens: Tensor) -> Tensor:
        text_ids, text_mask = require(batch, "text_ids", "text_mask")
        if text_ids.shape[0] < 2:
            raise ValueError(f"vtm needs at least 2 pairs per batch, got {text_ids.shape[0]}")
        text = model(mode="text", text_ids=text_ids, text_mask=text_mask)
        scores = model(mode="score", text=text, video={"video_tokens": tokens})["scores"]
        return vtm_loss(scores, self.temperature)

    def _qa(self, model: nn.Module, batch: Mapping[str, Tensor], tokens: Tensor) -> Tensor:
        (answer_index,) = require(batch, "answer_index")
        if "option_ids" in batch:
            option_ids, option_mask = require(batch, "option_ids", "option_mask")
            text = {"option_ids": option_ids, "option_mask": option_mask}
        else:
            text_ids, text_mask = require(batch, "text_ids", "text_mask")
            text = {"text_ids": text_ids, "text_mask": text_mask}
        logits = model(mode="qa", video_tokens=tokens, **text)["logits"]
        return answer_loss(logits, answer_index)

    def _pretext(
        self, model: nn.Module, batch: Mapping[str, Tensor], tokens: Tensor
    ) -> dict[str, Tensor]:
        text = {}
        if "mtm" in self.tasks:
            mtm_ids, text_mask = require(batch, "mtm_ids", "text_mask")
            text = {"text_ids": mtm_ids, "text_mask": text_mask}
        elif "text_ids" in batch:
            text_ids, text_mask = require(batch, "text_ids", "text_mask")
            text = {"text_ids": text_ids, "text_mask": text_mask}
        return model(mode="pretext", video_tokens=tokens, **text)
