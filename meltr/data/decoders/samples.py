"""What every decoder shares: reading a raw sample's members and its checked json record once,
the sample-kind contract the shard writer checks against, caption items, and ``collate``."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch


class CorruptSampleError(ValueError):
    """A shard sample that cannot be used: missing or invalid members, or undecodable data."""


class Tokenizer(Protocol):
    """What decoders need of a tokenizer (``meltr.data.text.WordPieceTokenizer`` is one)."""

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...


class SampleKind:
    """A sample kind (docs/ARCHITECTURE.md, "Shards"), the base of every decoder: the members a
    sample must have, and the checks of its json record and its array members. The shard writer
    runs the same checks (``meltr.data.writer``), so what is written can be read."""

    members: tuple[str, ...] = ("json",)

    @staticmethod
    def check_record(record: dict) -> None:
        """CorruptSampleError saying what is wrong with a json record of this kind."""
        raise NotImplementedError

    @staticmethod
    def check_array(member: str, array: np.ndarray) -> None:
        """CorruptSampleError when ``member`` (e.g. ``"image.npy"``), one of the kind's own array
        members, is not what the kind needs; other (extra) arrays are not checked."""

    def read_record(self, sample: dict) -> dict:
        """The sample's json record, parsed and checked (once per ``train_item`` /
        ``eval_items``)."""
        record = parse_record(sample)
        self.check_record(record)
        return record

    def read_array(self, sample: dict, member: str) -> np.ndarray:
        """The ``.npy`` ``member`` of ``sample``, checked by ``check_array``."""
        array = load_array(member_bytes(sample, member), member)
        self.check_array(member, array)
        return array


def field(record: dict, name: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``record[name]`` if it is a ``kind`` (and not a bool); CorruptSampleError otherwise."""
    value = record.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CorruptSampleError(f"json {name!r} is {value!r}, not {what}")
    return value


def strings(record: dict, name: str) -> list[str]:
    """``record[name]`` if it is a non-empty list of non-blank strings."""
    value = record.get(name)
    if not isinstance(value, list) or not value:
        raise CorruptSampleError(f"json {name!r} is {value!r}, not a non-empty list of strings")
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise CorruptSampleError(f"json {name!r} holds an empty or non-string entry")
    return value


def class_label(record: dict) -> int:
    """``record["label"]`` if it is an integer >= 0."""
    label = field(record, "label", int, "an integer")
    if label < 0:
        raise CorruptSampleError(f"json 'label' is {label}, not >= 0")
    return label


def member_bytes(sample: dict, name: str) -> bytes:
    if name not in sample:
        raise CorruptSampleError(f"no .{name} member")
    return sample[name]


def parse_record(sample: dict) -> dict:
    """The sample's json member as a dict; CorruptSampleError when it is not one."""
    try:
        record = json.loads(member_bytes(sample, "json"))
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


def extra_arrays(sample: dict, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The extra ``<name>.npy`` members as tensors, keyed by ``name``."""
    return {
        name: torch.from_numpy(load_array(member_bytes(sample, f"{name}.npy"), f"{name}.npy"))
        for name in names
    }


def caption_items(
    tokenizer: Tokenizer, record: dict, indices: Sequence[int], shared: dict
) -> list[dict]:
    """One item per caption index: ``shared`` plus the caption's tokens, text and index."""
    captions = record["captions"]
    ids, mask = tokenizer.encode([captions[index] for index in indices])
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


def random_index(count: int, generator: torch.Generator) -> int:
    """An index in ``[0, count)`` drawn from ``generator``."""
    return int(torch.randint(count, (), generator=generator))


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
