"""One raw shard sample -> model-ready items; items -> a batch dict (docs/ARCHITECTURE.md).

A raw sample is what webdataset groups from a shard: `{"__key__", "__url__", "mp4": bytes,
"json": bytes}`. An item is one (video, caption) pair as tensors; `collate` stacks items.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from meltr.data.text import WordPieceTokenizer, mask_tokens
from meltr.data.transforms import video_transform
from meltr.data.video import VideoDecodeError, read_clip


class CorruptSampleError(ValueError):
    """A shard sample that cannot be used: missing or invalid fields, or an undecodable video."""


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut: `num_frames` frames, short side resized to `resize`, square crop of
    `image_size` pixels."""

    num_frames: int
    image_size: int
    resize: int


def _parse_record(sample: dict) -> tuple[str, list[str]]:
    """`(video_id, captions)` from the sample's json member."""
    if "mp4" not in sample:
        raise CorruptSampleError("no .mp4 member")
    if "json" not in sample:
        raise CorruptSampleError("no .json member")
    try:
        record = json.loads(sample["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptSampleError(f"invalid json: {error}") from error
    if not isinstance(record, dict):
        raise CorruptSampleError(f"json is a {type(record).__name__}, not an object")
    video_id, captions = record.get("video_id"), record.get("captions")
    if not isinstance(video_id, str):
        raise CorruptSampleError(f"json 'video_id' is {video_id!r}, not a string")
    if not isinstance(captions, list) or not captions:
        raise CorruptSampleError(f"json 'captions' is {captions!r}, not a non-empty list")
    if not all(isinstance(caption, str) for caption in captions):
        raise CorruptSampleError("json 'captions' holds a non-string")
    return video_id, captions


def _clip(
    sample: dict, spec: ClipSpec, random_frames: bool, random_crop: bool, generator: torch.Generator
) -> torch.Tensor:
    try:
        frames = read_clip(sample["mp4"], spec.num_frames, random_frames, generator)
    except VideoDecodeError as error:
        raise CorruptSampleError(f"undecodable video: {error}") from error
    return video_transform(frames, spec.resize, spec.image_size, random_crop, generator)


def _items(
    video: torch.Tensor,
    video_id: str,
    captions: Sequence[str],
    caption_indices: Sequence[int],
    tokenizer: WordPieceTokenizer,
    generator: torch.Generator,
) -> list[dict]:
    ids, mask = tokenizer.encode([captions[index] for index in caption_indices])
    mlm_ids, mlm_labels = mask_tokens(ids, mask, tokenizer, generator)
    return [
        {
            "video": video,
            "text_ids": ids[row],
            "text_mask": mask[row],
            "mlm_ids": mlm_ids[row],
            "mlm_labels": mlm_labels[row],
            "video_id": video_id,
            "caption_index": index,
        }
        for row, index in enumerate(caption_indices)
    ]


def train_item(
    sample: dict, tokenizer: WordPieceTokenizer, spec: ClipSpec, generator: torch.Generator
) -> dict:
    """One training item: a caption drawn at random, random frames in each segment, a random crop
    shared by the frames, MLM masking; every random choice from `generator`, in that order.

    Raises:
        CorruptSampleError: the sample cannot be used (the message says why).
    """
    video_id, captions = _parse_record(sample)
    caption_index = int(torch.randint(len(captions), (), generator=generator))
    video = _clip(sample, spec, random_frames=True, random_crop=True, generator=generator)
    return _items(video, video_id, captions, [caption_index], tokenizer, generator)[0]


def eval_items(
    sample: dict,
    tokenizer: WordPieceTokenizer,
    spec: ClipSpec,
    random_frames: bool,
    generator: torch.Generator,
) -> list[dict]:
    """One item per caption of the sample, all sharing one decoded clip (centre crop). Frames are
    segment centres, or random inside segments from `generator` when `random_frames`; MLM masking
    draws from `generator` too.

    Raises:
        CorruptSampleError: the sample cannot be used (the message says why).
    """
    video_id, captions = _parse_record(sample)
    video = _clip(sample, spec, random_frames, random_crop=False, generator=generator)
    return _items(video, video_id, captions, range(len(captions)), tokenizer, generator)


def collate(items: Sequence[dict], num_corrupt: int) -> dict:
    """Stack items into the batch dict of docs/ARCHITECTURE.md; `num_corrupt` is passed through."""
    batch = {
        key: torch.stack([item[key] for item in items])
        for key in ("video", "text_ids", "text_mask", "mlm_ids", "mlm_labels")
    }
    batch["video_id"] = [item["video_id"] for item in items]
    batch["caption_index"] = torch.tensor([item["caption_index"] for item in items])
    batch["num_corrupt"] = num_corrupt
    return batch
