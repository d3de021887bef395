"""The eight UniVL losses (MELTR's Table 7 / appendix A.1), and the sentiment regression loss, as
one configurable loss source.

S, V are the text and video encoder outputs of the clean inputs, S', V' those of the masked text
(``mlm_ids``) and masked frames (``masked_features``), both made by :class:`UniVLMasking`.

- ``joint``: max-margin ranking (margin ``margin``) over the B x B cosine similarities of the
  mean-pooled, L2-normalised S and V (``text_feat``, ``video_feat``); both directions summed,
  averaged over all B x B entries, the diagonal included (the release's
  ``MaxMarginRankingLoss`` with one pair per video).
- ``align``: ``similarity_dense`` of the pooled cross encoding of every (text i, video j) pair,
  B x B; cross-entropy of each row at its diagonal (text -> video only, no temperature).
- ``cmlm``: the text MLM head on cross(S', V')'s text positions, cross-entropy at the masked
  tokens.
- ``cmfm``: the frame head on cross(S', V')'s masked frames, dot products with the clean
  LayerNormed features of every real frame of the batch, NCE at the frame itself (the
  normalised targets are not detached, as in the release).
- ``m_joint``, ``m_align``: ``joint`` and ``align`` on S', V'.
- ``decoder``: the decoder on cross(S, V) with teacher forcing (``decoder_ids``, made by
  :class:`UniVLDecoderInputs`), cross-entropy against ``decoder_targets``; like the release it
  averages over every position including the [PAD] targets, unless ``count_padding=False``.
- ``m_decoder``: the same on cross(S', V').
- ``sentiment`` (multimodal sentiment analysis; not a UniVL pretraining loss): the mean absolute
  error between ``model(mode="regress", text=S, video=V)["prediction"]`` and the batch's
  ``label`` (MMSA's L1 regression loss, the quantity the MAE metric reports).

One cross pass over (S', V') serves ``cmlm``, ``cmfm`` and ``m_decoder`` (the release runs a
second one for ``m_decoder``; identical without dropout), one over (S, V) serves ``decoder``.

Data parallelism (``meltr.backbones.losses``): ``joint`` / ``m_joint`` rank the features gathered
from every rank, ``cmlm`` and ``cmfm`` divide by the global count of masked tokens / frames and
``cmfm`` contrasts with the gathered frames of every rank, ``decoder`` / ``m_decoder`` and
``sentiment`` average over equal-sized shards: all exact (the mean over ranks of loss and
gradient is the single-process value of the global batch). ``align`` / ``m_align`` are not:
their negatives are the videos of the rank's own slice (B_local x B_local cross passes, as the
release computes them per GPU); the global B x B would cost world-size times as many
cross-encoder passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cached_property

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.losses import IGNORE_INDEX, gather_across_ranks, masked_token_loss, require

# The eight losses of UniVL's pretraining (MELTR's Table 7), then the downstream regression loss.
PRETRAINING_TASKS = ("joint", "m_joint", "align", "m_align", "cmlm", "cmfm", "decoder", "m_decoder")
TASKS = (*PRETRAINING_TASKS, "sentiment")
# Which text the encoder reads: the caption (retrieval; captioning targets the same caption),
# the transcript (captioning with transcripts) or none (captioning from video alone: the
# release's empty text "[CLS] [SEP]").
TEXT_INPUTS = {
    "caption": ("text_ids", "text_mask"),
    "transcript": ("transcript_ids", "transcript_mask"),
    "none": None,
}


def max_margin_ranking_loss(similarity: Tensor, margin: float) -> Tensor:
    """``mean_ij relu(margin + s_ij - s_ii) + relu(margin + s_ij - s_jj)`` over a square
    ``similarity`` (rows texts, columns videos, pair i positive)."""
    diagonal = similarity.diagonal()
    return (
        F.relu(margin + similarity - diagonal[:, None])
        + F.relu(margin + similarity - diagonal[None, :])
    ).mean()


def diagonal_cross_entropy(scores: Tensor) -> Tensor:
    """Mean over rows of ``-log_softmax(scores[i])[i]`` for square ``scores``."""
    return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))


def empty_text_like(text_ids: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``[CLS] [SEP]`` per row, ``[B, 2]``, read from ``text_ids`` (its first token and its last
    real token) and an all-ones mask."""
    last = (text_mask.sum(dim=1) - 1).clamp(min=0)
    ids = torch.stack([text_ids[:, 0], text_ids.gather(1, last[:, None])[:, 0]], dim=1)
    return ids, torch.ones_like(ids)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def frame_nce_loss(
    scores: Tensor,
    positions: Tensor,
    targets: Tensor,
    target_mask: Tensor,
) -> Tensor:
    """Masked frame modelling as NCE over the frames of the (global) batch.

    ``scores`` ``[n, F]``: the predictions at the ``n`` masked frames ``positions`` (bool
    ``[b, T]``, row-major order); ``targets`` ``[b, T, F]`` the clean normalised features of this
    rank's slice and ``target_mask`` ``[b, T]`` its real frames. Each prediction is scored by dot
    product against every real frame of every rank's slice (gathered), and the loss is the mean
    over masked frames of the cross-entropy at the frame itself.
    """
    local_batch, frames = positions.shape
    all_targets = gather_across_ranks(targets).flatten(0, 1)
    all_real = gather_across_ranks(target_mask.to(targets.dtype)).flatten() > 0.5
    logits = (scores @ all_targets.T).masked_fill(~all_real, float("-inf"))
    row, frame = positions.nonzero(as_tuple=True)
    own = (_rank() * local_batch + row) * frames + frame
    return masked_token_loss(logits[None], own[None])


class UniVLLoss:
    """``loss_source(model, batch) -> {task: scalar}`` for :class:`UniVL`, ``tasks`` in order (the
    first is the primary: ``align`` for retrieval, ``decoder`` for captioning, ``sentiment`` for
    sentiment analysis).

    ``text_input`` picks the encoder's text: ``"caption"`` (``text_ids``/``text_mask``),
    ``"transcript"`` (``transcript_ids``/``transcript_mask``) or ``"none"`` (``[CLS] [SEP]``
    made from ``text_ids``); ``mlm_ids`` must be the masked version of that text (``cmlm`` is
    refused with ``"none"``: there is nothing to mask). The decoder always targets the caption.

    Batch keys read: ``features``, ``feature_mask``, the text of ``text_input``; for the masked
    tasks ``mlm_ids``, ``mlm_labels``, ``masked_features``, ``frame_mask_labels``
    (:class:`UniVLMasking`); for ``decoder`` / ``m_decoder`` ``decoder_ids``,
    ``decoder_mask``, ``decoder_targets`` (:class:`UniVLDecoderInputs`); for ``sentiment``
    ``label`` (float ``[B]``). Randomness (dropout)
    comes only from the global torch RNG.
    """

    def __init__(
        self,
        tasks: Iterable[str] = ("align",),
        text_input: str = "caption",
        margin: float = 0.1,
        count_padding: bool = True,
    ) -> None:
        tasks = tuple(tasks)
        if not tasks:
            raise ValueError(f"tasks must name at least one of {TASKS}")
        unknown = [task for task in tasks if task not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown} in tasks={tasks}; known: {TASKS}")
        duplicates = sorted({task for task in tasks if tasks.count(task) > 1})
        if duplicates:
            raise ValueError(f"tasks={tasks} names {duplicates} more than once")
        if text_input not in TEXT_INPUTS:
            raise ValueError(f"text_input must be one of {tuple(TEXT_INPUTS)}, got {text_input!r}")
        if text_input == "none" and "cmlm" in tasks:
            raise ValueError("cmlm masks the encoder's text, which text_input='none' does not have")
        self.tasks = tasks
        self.text_input = text_input
        self.margin = margin
        self.count_padding = count_padding

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        passes = _Passes(model, batch, self)
        return {task: getattr(passes, task) for task in self.tasks}


class _Passes:
    """The forward passes of one loss evaluation, each run at most once, in the order the tasks
    first need them (so the global RNG is consumed in a fixed order)."""

    def __init__(self, model: nn.Module, batch: Mapping[str, Tensor], loss: UniVLLoss) -> None:
        self.model, self.batch, self.loss = model, batch, loss

    # ----- encoder inputs and outputs -----

    @cached_property
    def text_inputs(self) -> tuple[Tensor, Tensor]:
        keys = TEXT_INPUTS[self.loss.text_input]
        if keys is None:
            return empty_text_like(*require(self.batch, "text_ids", "text_mask"))
        ids, mask = require(self.batch, *keys)
        return ids, mask

    @cached_property
    def masked_text_ids(self) -> Tensor:
        if self.loss.text_input == "none":
            return self.text_inputs[0]
        (mlm_ids,) = require(self.batch, "mlm_ids")
        if mlm_ids.shape != self.text_inputs[0].shape:
            raise ValueError(
                f"mlm_ids has shape {tuple(mlm_ids.shape)}, the encoder text "
                f"({self.loss.text_input}) {tuple(self.text_inputs[0].shape)}: mask the text "
                "the loss reads (UniVLMasking text_keys)"
            )
        return mlm_ids

    def _text(self, ids: Tensor) -> dict[str, Tensor]:
        return self.model(mode="text", text_ids=ids, text_mask=self.text_inputs[1])

    def _video(self, features: Tensor) -> dict[str, Tensor]:
        (mask,) = require(self.batch, "feature_mask")
        return self.model(mode="video", features=features, feature_mask=mask)

    @cached_property
    def text(self) -> dict[str, Tensor]:
        return self._text(self.text_inputs[0])

    @cached_property
    def video(self) -> dict[str, Tensor]:
        return self._video(*require(self.batch, "features"))

    @cached_property
    def masked_text(self) -> dict[str, Tensor]:
        return self._text(self.masked_text_ids)

    @cached_property
    def masked_video(self) -> dict[str, Tensor]:
        return self._video(*require(self.batch, "masked_features"))

    @cached_property
    def clean_cross(self) -> dict[str, Tensor]:
        return self.model(mode="cross", text=self.text, video=self.video)

    @cached_property
    def masked_cross(self) -> dict[str, Tensor]:
        heads = {}
        if "cmlm" in self.loss.tasks:
            (labels,) = require(self.batch, "mlm_labels")
            heads["mlm_positions"] = labels != IGNORE_INDEX
        if "cmfm" in self.loss.tasks:
            (labels,) = require(self.batch, "frame_mask_labels")
            heads["mfm_positions"] = labels != IGNORE_INDEX
        return self.model(mode="cross", text=self.masked_text, video=self.masked_video, **heads)

    # ----- the losses -----

    def _joint(self, text: Mapping[str, Tensor], video: Mapping[str, Tensor]) -> Tensor:
        text_feat = gather_across_ranks(text["text_feat"])
        video_feat = gather_across_ranks(video["video_feat"])
        return max_margin_ranking_loss(text_feat @ video_feat.T, self.loss.margin)

    def _align(self, text: Mapping[str, Tensor], video: Mapping[str, Tensor]) -> Tensor:
        return diagonal_cross_entropy(self.model(mode="score", text=text, video=video)["scores"])

    def _decoder(self, cross: Mapping[str, Tensor]) -> Tensor:
        ids, mask, targets = require(self.batch, "decoder_ids", "decoder_mask", "decoder_targets")
        logits = self.model(mode="decode", cross=cross, decoder_ids=ids, decoder_mask=mask)
        if self.loss.count_padding:
            return F.cross_entropy(logits["logits"].flatten(0, 1), targets.flatten())
        labels = targets.masked_fill(mask == 0, IGNORE_INDEX)
        return masked_token_loss(logits["logits"], labels)

    @property
    def joint(self) -> Tensor:
        return self._joint(self.text, self.video)

    @property
    def m_joint(self) -> Tensor:
        return self._joint(self.masked_text, self.masked_video)

    @property
    def align(self) -> Tensor:
        return self._align(self.text, self.video)

    @property
    def m_align(self) -> Tensor:
        return self._align(self.masked_text, self.masked_video)

    @property
    def cmlm(self) -> Tensor:
        (labels,) = require(self.batch, "mlm_labels")
        positions = labels != IGNORE_INDEX
        return masked_token_loss(self.masked_cross["mlm_logits"][None], labels[positions][None])

    @property
    def cmfm(self) -> Tensor:
        features, mask, labels = require(
            self.batch, "features", "feature_mask", "frame_mask_labels"
        )
        targets = self.model(mode="normalize", features=features)["normalized_features"]
        return frame_nce_loss(
            self.masked_cross["mfm_scores"], labels != IGNORE_INDEX, targets, mask
        )

    @property
    def decoder(self) -> Tensor:
        return self._decoder(self.clean_cross)

    @property
    def m_decoder(self) -> Tensor:
        return self._decoder(self.masked_cross)

    @property
    def sentiment(self) -> Tensor:
        (labels,) = require(self.batch, "label")
        prediction = self.model(mode="regress", text=self.text, video=self.video)["prediction"]
        return F.l1_loss(prediction, labels.to(prediction.dtype))
