"""Per-item training transforms for UniVL (docs/ARCHITECTURE.md, "Transforms"): the masking of
text and frames that the masked losses read, and the decoder's teacher-forcing inputs.

Both are called on one item (no batch dimension) with the sample's generator and return a new
dict; the input is never modified.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor

from meltr.backbones.losses import require
from meltr.data.text import IGNORE_INDEX, MaskingVocab, mask_tokens


class CaptionVocab(Protocol):
    """The special ids :class:`UniVLDecoderInputs` needs (a ``WordPieceTokenizer`` has them)."""

    cls_id: int
    sep_id: int
    pad_id: int


class UniVLMasking:
    """Adds ``mlm_ids``, ``mlm_labels`` (int64 ``[L]``), ``masked_features`` (float ``[T, F]``)
    and ``frame_mask_labels`` (int64 ``[T]``) to an item of the feature + text kind.

    Text (``text_keys``: the ids and mask of the text the encoder reads, e.g.
    ``("transcript_ids", "transcript_mask")`` for captioning with transcripts): BERT masking of
    :func:`meltr.data.text.mask_tokens`: each real non-special token is selected with
    ``probability``; a selected token becomes [MASK] (80 %), a random non-special token (10 %) or
    stays (10 %); ``mlm_labels`` holds the original id there and -100 elsewhere. The draw is
    repeated until at least one token is selected (the release's loop), unless the text has no
    maskable token.

    Frames: each real frame (``feature_mask`` 1) is zeroed with ``frame_probability``, the draw
    repeated until at least one is (unless there is no real frame); ``frame_mask_labels`` holds
    the frame's own index at zeroed frames (the target of the frame NCE) and -100 elsewhere.
    The zeroing happens on the raw features, before ``normalize_video``, as in the release.

    Differences from the release: special tokens inside the text ([UNK]) are never selected (the
    release masks every position between [CLS] and [SEP]), and the 10 % random replacement draws
    from the non-special tokens (the release from the whole vocabulary).
    """

    def __init__(
        self,
        tokenizer: MaskingVocab,
        text_keys: tuple[str, str] = ("text_ids", "text_mask"),
        probability: float = 0.15,
        frame_probability: float = 0.15,
    ) -> None:
        for name, value in (("probability", probability), ("frame_probability", frame_probability)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        self.vocab = tokenizer
        self.text_keys = tuple(text_keys)
        self.probability = probability
        self.frame_probability = frame_probability
        self._special = torch.tensor(sorted(tokenizer.special_ids), dtype=torch.long)

    def __call__(self, item: Mapping[str, object], generator: torch.Generator) -> dict:
        ids, mask = require(item, *self.text_keys)
        features, feature_mask = require(item, "features", "feature_mask")
        out = dict(item)
        out["mlm_ids"], out["mlm_labels"] = self._mask_text(ids, mask, generator)
        out["masked_features"], out["frame_mask_labels"] = self._mask_frames(
            features, feature_mask, generator
        )
        return out

    def _mask_text(
        self, ids: Tensor, mask: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        maskable = mask.bool() & ~torch.isin(ids, self._special.to(ids.dtype))
        while True:
            masked, labels = mask_tokens(ids, mask, self.vocab, generator, self.probability)
            if not maskable.any() or labels.ne(IGNORE_INDEX).any():
                return masked, labels

    def _mask_frames(
        self, features: Tensor, feature_mask: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        if features.dim() != 2 or feature_mask.shape != features.shape[:1]:
            raise ValueError(
                f"features must be [T, F] with feature_mask [T]; got {tuple(features.shape)} "
                f"and {tuple(feature_mask.shape)}"
            )
        real = feature_mask.bool()
        while True:
            zeroed = real & (torch.rand(real.shape, generator=generator) < self.frame_probability)
            if zeroed.any() or not real.any():
                break
        masked = features.masked_fill(zeroed[:, None], 0.0)
        positions = torch.arange(len(real), dtype=torch.long)
        return masked, torch.where(zeroed, positions, torch.full_like(positions, IGNORE_INDEX))


class UniVLDecoderInputs:
    """Adds the decoder's teacher-forcing inputs made from the caption ``text_ids`` /
    ``text_mask`` (``[CLS] w_1 .. w_n [SEP] [PAD]...``), all int64 ``[L]``:
    ``decoder_ids`` = ``[CLS] w_1 .. w_n [PAD]...``, ``decoder_mask`` 1 on those n + 1 positions,
    ``decoder_targets`` = ``w_1 .. w_n [SEP] [PAD]...`` (the release's ``input_caption_ids``,
    ``decoder_mask`` and ``output_caption_ids``). ``generator`` is not used (no randomness).
    """

    def __init__(self, tokenizer: CaptionVocab) -> None:
        for name in ("cls_id", "sep_id", "pad_id"):
            if not hasattr(tokenizer, name):
                raise TypeError(f"UniVLDecoderInputs needs tokenizer.{name}")
        self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id

    def __call__(self, item: Mapping[str, object], generator: torch.Generator) -> dict:
        ids, mask = require(item, "text_ids", "text_mask")
        length = int(mask.sum())
        if length < 2 or int(ids[0]) != self.cls_id or int(ids[length - 1]) != self.sep_id:
            raise ValueError(
                f"item {item.get('video_id', '?')!r}: text_ids must be [CLS] ... [SEP] over its "
                f"{length} real positions, got {ids[:length].tolist()}"
            )
        decoder_ids = ids.clone()
        decoder_ids[length - 1] = self.pad_id
        decoder_mask = mask.clone()
        decoder_mask[length - 1] = 0
        targets = torch.cat([ids[1:], ids.new_full((1,), self.pad_id)])
        targets[length - 1 :] = self.pad_id
        out = dict(item)
        out.update(decoder_ids=decoder_ids, decoder_mask=decoder_mask, decoder_targets=targets)
        return out
