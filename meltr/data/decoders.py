"""One decoder per sample kind: a raw shard sample -> model-ready items (docs/ARCHITECTURE.md).

A raw sample is what webdataset groups from a shard: ``{"__key__", "__url__", "json": bytes,
<member>: bytes, ...}``. A decoder

- names the members its kind needs (``members``) and checks a sample's json record
  (``check_record``; the shard writer uses the same check, so what is written can be read);
- turns a sample into one training item (``train_item(sample, generator)``: every random choice
  drawn from ``generator``) or into its evaluation items (``eval_items(sample, generator,
  random_view)``: one per caption or question);
- raises ``CorruptSampleError`` (the message says what is wrong) for a sample it cannot use.

``collate`` stacks items of any kind into a batch.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from meltr.data.transforms import video_transform
from meltr.data.video import VideoDecodeError, read_clip

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CorruptSampleError(ValueError):
    """A shard sample that cannot be used: missing or invalid members, or undecodable data."""


class Tokenizer(Protocol):
    """What decoders need of a tokenizer (``meltr.data.text.WordPieceTokenizer`` is one)."""

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


# ---------------------------------------------------------------- records and members


def _field(record: dict, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = record.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CorruptSampleError(f"json {name!r} is {value!r}, not {what}")
    return value


def _strings(record: dict, name: str) -> list[str]:
    value = record.get(name)
    if not isinstance(value, list) or not value:
        raise CorruptSampleError(f"json {name!r} is {value!r}, not a non-empty list of strings")
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise CorruptSampleError(f"json {name!r} holds an empty or non-string entry")
    return value


def _member(sample: dict, name: str) -> bytes:
    if name not in sample:
        raise CorruptSampleError(f"no .{name} member")
    return sample[name]


def _record(sample: dict) -> dict:
    try:
        record = json.loads(_member(sample, "json"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptSampleError(f"invalid json: {error}") from error
    if not isinstance(record, dict):
        raise CorruptSampleError(f"json is a {type(record).__name__}, not an object")
    return record


def load_array(data: bytes, name: str) -> np.ndarray:
    """A ``.npy`` member's array (no pickles); CorruptSampleError naming the member otherwise."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise CorruptSampleError(f"invalid .{name} array: {error}") from error


def _arrays(sample: dict, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The extra ``<name>.npy`` members as tensors, keyed by ``name``."""
    return {
        name: torch.from_numpy(load_array(_member(sample, f"{name}.npy"), f"{name}.npy"))
        for name in names
    }


class _VideoFrames:
    """How clips are cut: ``num_frames`` frames, short side resized to ``resize``, a square crop
    of ``image_size`` pixels (random in training, centred in evaluation), ImageNet-normalised."""

    def __init__(self, num_frames: int, image_size: int, resize: int) -> None:
        for name, value in (
            ("num_frames", num_frames),
            ("image_size", image_size),
            ("resize", resize),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if resize < image_size:
            raise ValueError(f"resize ({resize}) must be >= image_size ({image_size})")
        self.num_frames, self.image_size, self.resize = num_frames, image_size, resize

    def clip(
        self,
        sample: dict,
        random_frames: bool,
        random_crop: bool,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """float32 ``[num_frames, 3, image_size, image_size]``; frames first, then the crop drawn
        from ``generator``."""
        try:
            frames = read_clip(_member(sample, "mp4"), self.num_frames, random_frames, generator)
        except VideoDecodeError as error:
            raise CorruptSampleError(f"undecodable video: {error}") from error
        return video_transform(frames, self.resize, self.image_size, random_crop, generator)


def _text(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return tokenizer.encode(list(texts))


def _caption_items(
    tokenizer: Tokenizer, record: dict, indices: Sequence[int], shared: dict
) -> list[dict]:
    """One item per caption index: ``shared`` plus the caption's tokens, text and index."""
    captions = record["captions"]
    ids, mask = _text(tokenizer, [captions[index] for index in indices])
    return [
        shared
        | {
            "text_ids": ids[row],
            "text_mask": mask[row],
            "caption": captions[index],
            "video_id": record["video_id"],
            "caption_index": index,
        }
        for row, index in enumerate(indices)
    ]


# ---------------------------------------------------------------- the kinds


class VideoCaptions(_VideoFrames):
    """Video + captions: members ``mp4``, ``json`` ``{video_id, captions: [str, ...]}``.

    Items: ``video`` float32 ``[F, 3, S, S]``, ``text_ids`` / ``text_mask`` int64 ``[L]``,
    ``caption`` (str), ``video_id``, ``caption_index``, plus the extra ``arrays``. Training: one
    caption drawn at random, random frames in each segment, one random crop for the clip (drawn in
    that order). Evaluation: one item per caption sharing one clip (segment centres, or random
    frames when ``random_view``), centre crop.
    """

    members = ("json", "mp4")

    def __init__(
        self,
        tokenizer: Tokenizer,
        num_frames: int = 3,
        image_size: int = 224,
        resize: int = 268,
        arrays: Sequence[str] = (),
    ) -> None:
        super().__init__(num_frames, image_size, resize)
        self.tokenizer, self.arrays = tokenizer, tuple(arrays)

    @staticmethod
    def check_record(record: dict) -> None:
        _field(record, "video_id", str, "a string")
        _strings(record, "captions")

    def _items(
        self, sample: dict, record: dict, video: torch.Tensor, indices: Sequence[int]
    ) -> list[dict]:
        shared = {"video": video} | _arrays(sample, self.arrays)
        return _caption_items(self.tokenizer, record, indices, shared)

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        record = _record(sample)
        self.check_record(record)
        index = int(torch.randint(len(record["captions"]), (), generator=generator))
        video = self.clip(sample, random_frames=True, random_crop=True, generator=generator)
        return self._items(sample, record, video, [index])[0]

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        record = _record(sample)
        self.check_record(record)
        video = self.clip(sample, random_view, random_crop=False, generator=generator)
        return self._items(sample, record, video, range(len(record["captions"])))


def question_with_option(question: str, option: str, options: Sequence[str]) -> str:
    """The default text of one multiple-choice option: the question followed by the option
    (``options``, all of the question's options, unused)."""
    return f"{question} {option}"


class VideoQA(_VideoFrames):
    """Video + question/answer: members ``mp4``, ``json`` ``{video_id, question, answer: str,
    answer_index: int, options?: [str, ...]}``.

    ``answer_index`` indexes ``options`` for a multiple-choice question and the answer
    vocabulary for an open-ended one (-1: the answer is outside the vocabulary; such items are
    kept, and it is up to the loss to exclude them and to the metric to count them wrong).
    Items: ``video``, ``text_ids`` / ``text_mask`` (the question), ``question``, ``answer``,
    ``answer_index``, ``video_id``, ``key`` (the sample key), and for multiple choice
    ``option_ids`` / ``option_mask`` int64 ``[K, L]``, the tokens of ``choice_text(question,
    option, options)`` for each option; plus the extra ``arrays``. One item per sample, in
    training and evaluation; training draws random frames then a random crop.
    """

    members = ("json", "mp4")

    def __init__(
        self,
        tokenizer: Tokenizer,
        num_frames: int = 5,
        image_size: int = 224,
        resize: int = 224,
        choice_text: Callable[[str, str, Sequence[str]], str] = question_with_option,
        arrays: Sequence[str] = (),
    ) -> None:
        super().__init__(num_frames, image_size, resize)
        self.tokenizer, self.choice_text, self.arrays = tokenizer, choice_text, tuple(arrays)

    @staticmethod
    def check_record(record: dict) -> None:
        _field(record, "video_id", str, "a string")
        _field(record, "question", str, "a string")
        _field(record, "answer", str, "a string")
        index = _field(record, "answer_index", int, "an integer")
        if "options" in record:
            options = _strings(record, "options")
            if not 0 <= index < len(options):
                raise CorruptSampleError(
                    f"json 'answer_index' {index} is not an index into the {len(options)} options"
                )
        elif index < -1:
            raise CorruptSampleError(f"json 'answer_index' is {index}, not >= -1")

    def _item(self, sample: dict, video: torch.Tensor) -> dict:
        record = _record(sample)
        ids, mask = _text(self.tokenizer, [record["question"]])
        item = {
            "video": video,
            "text_ids": ids[0],
            "text_mask": mask[0],
            "question": record["question"],
            "answer": record["answer"],
            "answer_index": record["answer_index"],
            "video_id": record["video_id"],
            "key": sample["__key__"],
        }
        if "options" in record:
            options = record["options"]
            texts = [self.choice_text(record["question"], o, options) for o in options]
            item["option_ids"], item["option_mask"] = _text(self.tokenizer, texts)
        return item | _arrays(sample, self.arrays)

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        self.check_record(_record(sample))
        video = self.clip(sample, random_frames=True, random_crop=True, generator=generator)
        return self._item(sample, video)

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        self.check_record(_record(sample))
        video = self.clip(sample, random_view, random_crop=False, generator=generator)
        return [self._item(sample, video)]


class VideoLabel(_VideoFrames):
    """Video + class label: members ``mp4``, ``json`` ``{video_id, label: int}``.

    Items: ``video``, ``label`` (int), ``video_id``, plus the extra ``arrays``; training draws
    random frames then a random crop; evaluation takes segment centres (random frames when
    ``random_view``) and a centre crop.
    """

    members = ("json", "mp4")

    def __init__(
        self,
        num_frames: int = 5,
        image_size: int = 224,
        resize: int = 224,
        arrays: Sequence[str] = (),
    ) -> None:
        super().__init__(num_frames, image_size, resize)
        self.arrays = tuple(arrays)

    @staticmethod
    def check_record(record: dict) -> None:
        _field(record, "video_id", str, "a string")
        if _field(record, "label", int, "an integer") < 0:
            raise CorruptSampleError(f"json 'label' is {record['label']}, not >= 0")

    def _item(self, sample: dict, video: torch.Tensor) -> dict:
        record = _record(sample)
        return {"video": video, "label": record["label"], "video_id": record["video_id"]} | (
            _arrays(sample, self.arrays)
        )

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        self.check_record(_record(sample))
        return self._item(sample, self.clip(sample, True, True, generator))

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        self.check_record(_record(sample))
        return [self._item(sample, self.clip(sample, random_view, False, generator))]


class FeatureText:
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
        _field(record, "video_id", str, "a string")
        _strings(record, "captions")
        if "transcript" in record:
            _field(record, "transcript", str, "a string")
        if "label" in record:
            _field(record, "label", (int, float), "a number")

    def _features(self, sample: dict) -> tuple[torch.Tensor, torch.Tensor]:
        array = load_array(_member(sample, "features.npy"), "features.npy")
        if array.ndim != 2 or array.shape[0] == 0 or not np.issubdtype(array.dtype, np.floating):
            raise CorruptSampleError(
                f"features.npy is {array.dtype} {array.shape}, not a float array [T >= 1, D]"
            )
        if not np.isfinite(array).all():
            raise CorruptSampleError("features.npy holds non-finite values")
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

    def _items(self, sample: dict, indices: Sequence[int]) -> list[dict]:
        record = _record(sample)
        self.check_record(record)
        features, feature_mask = self._features(sample)
        shared: dict[str, Any] = {"features": features, "feature_mask": feature_mask}
        if self.transcript and "transcript" in record:
            transcript_ids, transcript_mask = _text(self.tokenizer, [record["transcript"]])
            shared |= {"transcript_ids": transcript_ids[0], "transcript_mask": transcript_mask[0]}
        if "label" in record:
            shared["label"] = float(record["label"])
        shared |= _arrays(sample, self.arrays)
        return _caption_items(self.tokenizer, record, indices, shared)

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        captions = _strings(_record(sample), "captions")
        index = int(torch.randint(len(captions), (), generator=generator))
        return self._items(sample, [index])[0]

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        return self._items(sample, range(len(_strings(_record(sample), "captions"))))


class ImageLabel:
    """Image + class label: members ``image.npy`` (uint8 ``[H, W, 3]``), ``json`` ``{image_id,
    label: int}``.

    Items: ``image`` float32 ``[3, H, W]`` (scaled to [0, 1], minus ``mean``, over ``std`` per
    channel), ``label`` (int), ``image_id``. Training augmentation, drawn in this order: a random
    ``H x W`` crop of the image zero-padded by ``crop_padding`` pixels on each side, then a
    horizontal flip with probability 0.5 when ``flip``. Evaluation is deterministic.
    """

    members = ("image.npy", "json")

    def __init__(
        self,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        crop_padding: int = 4,
        flip: bool = True,
    ) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be 3 numbers (std > 0), got {mean}, {std}")
        if not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding must be an integer >= 0, got {crop_padding!r}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.crop_padding, self.flip = crop_padding, flip

    @staticmethod
    def check_record(record: dict) -> None:
        _field(record, "image_id", str, "a string")
        if _field(record, "label", int, "an integer") < 0:
            raise CorruptSampleError(f"json 'label' is {record['label']}, not >= 0")

    def _pixels(self, sample: dict) -> torch.Tensor:
        array = load_array(_member(sample, "image.npy"), "image.npy")
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise CorruptSampleError(
                f"image.npy is {array.dtype} {array.shape}, not uint8 [H, W, 3]"
            )
        return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0

    def _item(self, sample: dict, pixels: torch.Tensor) -> dict:
        record = _record(sample)
        self.check_record(record)
        image = ((pixels - self.mean) / self.std).contiguous()
        return {"image": image, "label": record["label"], "image_id": record["image_id"]}

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        self.check_record(_record(sample))
        pixels = self._pixels(sample)
        if self.crop_padding:
            height, width = pixels.shape[1:]
            pad = self.crop_padding
            padded = torch.nn.functional.pad(pixels, (pad, pad, pad, pad))
            top = int(torch.randint(2 * pad + 1, (), generator=generator))
            left = int(torch.randint(2 * pad + 1, (), generator=generator))
            pixels = padded[:, top : top + height, left : left + width]
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            pixels = pixels.flip(-1)
        return self._item(sample, pixels)

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        self.check_record(_record(sample))
        return [self._item(sample, self._pixels(sample))]


class TextLabel:
    """Text + class label: member ``json`` ``{text_id: str, text: str, label: int}`` (converters
    may add fields, e.g. ``class_name``).

    Items: ``text_ids`` / ``text_mask`` int64 ``[L]``, ``label`` (int), ``text_id``, ``text``.
    Nothing is random: training and evaluation items are the same (masking is a transform).
    """

    members = ("json",)

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    @staticmethod
    def check_record(record: dict) -> None:
        _field(record, "text_id", str, "a string")
        if not _field(record, "text", str, "a string").strip():
            raise CorruptSampleError("json 'text' is empty")
        if _field(record, "label", int, "an integer") < 0:
            raise CorruptSampleError(f"json 'label' is {record['label']}, not >= 0")

    def _item(self, sample: dict) -> dict:
        record = _record(sample)
        self.check_record(record)
        ids, mask = _text(self.tokenizer, [record["text"]])
        return {
            "text_ids": ids[0],
            "text_mask": mask[0],
            "label": record["label"],
            "text_id": record["text_id"],
            "text": record["text"],
        }

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        return self._item(sample)

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        return [self._item(sample)]


# ---------------------------------------------------------------- batches


def collate(items: Sequence[dict], num_corrupt: int) -> dict:
    """Stack items into a batch: tensors along a new dim 0, ints to an int64 tensor, floats to a
    float32 tensor, anything else (strings) into a list; ``num_corrupt`` is passed through."""
    batch: dict[str, Any] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, bool) or not isinstance(first, int | float):
            batch[key] = values
        elif isinstance(first, int):
            batch[key] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[key] = torch.tensor(values, dtype=torch.float32)
    batch["num_corrupt"] = num_corrupt
    return batch
