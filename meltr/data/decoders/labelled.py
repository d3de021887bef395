"""The kinds of one input and a label, one item per sample: image + label (``ImageLabel``), text
+ label (``TextLabel``), tensor + label (``TensorLabel``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from meltr.data.decoders.samples import (
    CorruptSampleError,
    SampleKind,
    Tokenizer,
    class_label,
    field,
)
from meltr.data.transforms import IMAGENET_MEAN, IMAGENET_STD


class ImageLabel(SampleKind):
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
        field(record, "image_id", str, "a string")
        class_label(record)

    @staticmethod
    def check_array(member: str, array: np.ndarray) -> None:
        if member == "image.npy" and (
            array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3
        ):
            raise CorruptSampleError(
                f"image.npy is {array.dtype} {array.shape}, not uint8 [H, W, 3]"
            )

    def _pixels(self, sample: dict) -> torch.Tensor:
        array = self.read_array(sample, "image.npy")
        return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0

    def _item(self, record: dict, pixels: torch.Tensor) -> dict:
        image = ((pixels - self.mean) / self.std).contiguous()
        return {"image": image, "label": record["label"], "image_id": record["image_id"]}

    def _augment(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop_padding:
            height, width = pixels.shape[1:]
            pad = self.crop_padding
            padded = torch.nn.functional.pad(pixels, (pad, pad, pad, pad))
            top = int(torch.randint(2 * pad + 1, (), generator=generator))
            left = int(torch.randint(2 * pad + 1, (), generator=generator))
            pixels = padded[:, top : top + height, left : left + width]
        if self.flip and bool(torch.rand((), generator=generator) < 0.5):
            pixels = pixels.flip(-1)
        return pixels

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        record = self.read_record(sample)
        return self._item(record, self._augment(self._pixels(sample), generator))

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        record = self.read_record(sample)
        return [self._item(record, self._pixels(sample))]


class TextLabel(SampleKind):
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
        field(record, "text_id", str, "a string")
        if not field(record, "text", str, "a string").strip():
            raise CorruptSampleError("json 'text' is empty")
        class_label(record)

    def _item(self, sample: dict) -> dict:
        record = self.read_record(sample)
        ids, mask = self.tokenizer.encode([record["text"]])
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


class TensorLabel(SampleKind):
    """Tensor + label, the generic kind: members ``tensor.npy`` (any shape, a bool, integer or
    float dtype; finite), ``json`` ``{tensor_id: str, label: int | float}`` (an int >= 0 is a
    class, a float a regression target).

    Items: ``tensor`` float32 (the array's shape and values, converted), ``label`` (as in the
    record), ``tensor_id``. Nothing is random or augmented: training and evaluation items are the
    same. A batch stacks tensors, so the samples of one dataset share a shape.
    """

    members = ("json", "tensor.npy")

    @staticmethod
    def check_record(record: dict) -> None:
        field(record, "tensor_id", str, "a string")
        label = field(record, "label", (int, float), "a number")
        if isinstance(label, int):
            class_label(record)
        elif not math.isfinite(label):
            raise CorruptSampleError(f"json 'label' is {label}, not a finite number")

    @staticmethod
    def check_array(member: str, array: np.ndarray) -> None:
        if member != "tensor.npy":
            return
        if array.dtype.kind not in "biuf":
            raise CorruptSampleError(f"tensor.npy is {array.dtype}, not a bool or number array")
        with np.errstate(over="ignore"):  # a value beyond float32's range becomes inf
            as_float32 = array.astype(np.float32)
        if not np.isfinite(as_float32).all():
            raise CorruptSampleError("tensor.npy holds values that are not finite as float32")

    def _item(self, sample: dict) -> dict:
        record = self.read_record(sample)
        tensor = torch.from_numpy(self.read_array(sample, "tensor.npy").astype(np.float32))
        return {"tensor": tensor, "label": record["label"], "tensor_id": record["tensor_id"]}

    def train_item(self, sample: dict, generator: torch.Generator) -> dict:
        return self._item(sample)

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list:
        return [self._item(sample)]
