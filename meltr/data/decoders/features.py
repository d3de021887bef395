"""The feature sequence + text kind (``FeatureText``): pre-extracted clip features with captions,
an optional transcript and an optional regression label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from meltr.data.decoders.samples import (
    CorruptSampleError,
    SampleKind,
    Tokenizer,
    caption_items,
    extra_arrays,
    field,
    random_index,
    strings,
)


class FeatureText(SampleKind):
    """Feature sequence + text: members ``features.npy`` (float ``[T, D]``), ``json`` ``{video_id,
    captions: [str, ...], transcript?: str, label?: float}``.

    Items: ``features`` float32 ``[max_frames, D]`` (the first ``max_frames`` feature rows, or
    ``max_frames`` rows spread uniformly when ``frame_sampling="uniform"``; zero-padded),
    ``feature_mask`` int64 ``[max_frames]``, ``text_ids`` / ``text_mask`` (the caption),
    ``caption``, ``video_id``, ``caption_index``; with a transcript in the record (and
    ``transcript=True``) ``transcript_ids`` / ``transcript_mask``; with a label ``label``
    (float); plus the extra ``arrays``. Training draws one caption; evaluation yields one item per
    caption. Nothing else is random.
    """

    members = ("features.npy", "json")

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_frames: int = 48,
        frame_sampling: str = "head",
        transcript: bool = True,
        arrays: Sequence[str] = (),
    ) -> None:
        if not isinstance(max_frames, int) or max_frames < 1:
            raise ValueError(f"max_frames must be an integer >= 1, got {max_frames!r}")
        if frame_sampling not in ("head", "uniform"):
            raise ValueError(f"frame_sampling must be 'head' or 'uniform', got {frame_sampling!r}")
        self.tokenizer, self.max_frames, self.frame_sampling = tokenizer, max_frames, frame_sampling
        self.transcript, self.arrays = transcript, tuple(arrays)

    @staticmethod
    def check_record(record: dict) -> None:
        field(record, "video_id", str, "a string")
        strings(record, "captions")
        if "transcript" in record:
            field(record, "transcript", str, "a string")
        if "label" in record:
            field(record, "label", (int, float), "a number")

    @staticmethod
    def check_array(member: str, array: np.ndarray) -> None:
        if member != "features.npy":
            return
        if array.ndim != 2 or array.shape[0] == 0 or not np.issubdtype(array.dtype, np.floating):
            raise CorruptSampleError(
                f"features.npy is {array.dtype} {array.shape}, not a float array [T >= 1, D]"
            )
        if not np.isfinite(array).all():
            raise CorruptSampleError("features.npy holds non-finite values")

    def _features(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        array = self.read_array(sample, "features.npy")
        if len(array) > self.max_frames:
            rows = (
                np.arange(self.max_frames)
                if self.frame_sampling == "head"
                else np.linspace(0, len(array) - 1, self.max_frames).round().astype(int)
            )
            array = array[rows]
        features = torch.zeros(self.max_frames, array.shape[1])
        features[: len(array)] = torch.from_numpy(array.astype(np.float32))
        mask = torch.zeros(self.max_frames, dtype=torch.int64)
        mask[: len(array)] = 1
        return features, mask

    def _items(self, sample: dict, record: dict, indices: Sequence[int]) -> list[dict]:
        features, feature_mask = self._features(sample)
        shared: dict[str, Any] = {"features": features, "feature_mask": feature_mask}
        if self.transcript and "transcript" in record:
            transcript_ids, transcript_mask = self.tokenizer.encode([record["transcript"]])
            shared |= {"transcript_ids": transcript_ids[0], "transcript_mask": transcript_mask[0]}
        if "label" in record:
            shared["label"] = float(record["label"])
        shared |= extra_arrays(sample, self.arrays)
        return caption_items(self.tokenizer, record, indices, shared)

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        record = self.read_record(sample)
        index = random_index(len(record["captions"]), generator)
        return self._items(sample, record, [index])[0]

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        record = self.read_record(sample)
        return self._items(sample, record, range(len(record["captions"])))
