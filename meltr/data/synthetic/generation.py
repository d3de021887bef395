"""What every generator shares: the random stream of one item, and generating a dataset once.

A generated dataset's directory holds its shards (written by ``meltr.data.writer``: complete
shards are kept, ``conversion.json`` records what wrote them), its text files (a vocabulary, a
class list) and ``manifest.json``::

    {"format": "meltr-generated-v1", "generator": "<name>", "arguments": {...},
     "complete": false | true, "files": ["train-000000.tar", ..., "vocab.txt"]}

written incomplete before anything else and complete, with every file it wrote, last. The
arguments are all of the generator's but ``workers`` (which does not change the output).
``generate_dataset`` reads it under ``meltr.data.cache.generation_lock`` (one process at a time)
and finds one of three cases:

- **the same dataset, complete** (same generator and arguments, every listed file there): reused
  as it is; nothing is written;
- **the same dataset, incomplete** (interrupted, or a file lost since) with its shards'
  ``conversion.json``: resumed; complete shards are kept, the rest is written;
- **another dataset** (other arguments, another generator, an older or unreadable manifest, shards
  without a manifest, or an incomplete dataset without a conversion record, such as the caches meltr
  wrote before the writer kept one): refused with a ValueError naming the directory and both
  argument sets. With ``replace=True`` its files (shards, partial shards, conversion record,
  manifest, the files the manifest lists or the plan writes; nothing else) are deleted instead and
  the dataset generated anew.

The generators' ``generate_*(directory, ...)`` refuse by default (a directory of the user's is
never emptied behind their back); their ``cached_*(...)`` replace, since a cache folder is
meltr's own and named by the arguments, so that a mismatch there means a folder an older meltr
wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meltr.data.cache import generation_lock
from meltr.data.writer import RECORD, Description, Kind, Sample, write_shards

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "meltr-generated-v1"
SPLITS = ("train", "val", "test")
SPLIT_CODES = {"train": 0, "test": 1, "val": 2}


def item_rng(
    seed: int, split: str, index: int, split_codes: Mapping[str, int] = SPLIT_CODES
) -> np.random.Generator:
    """The random stream of item ``index`` of ``split``, independent of every other item's."""
    return np.random.default_rng([seed, split_codes[split], index])


def check_minimums(arguments: Mapping[str, Any], minimum: Mapping[str, int]) -> None:
    """ValueError naming the first argument of ``minimum`` that is not an integer (a bool is not)
    of at least its minimum."""
    for name, low in minimum.items():
        value = arguments[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def text_lines(lines: Sequence[str]) -> str:
    """A text file's content: ``lines``, each ended by a newline."""
    return "".join(f"{line}\n" for line in lines)


@dataclass(frozen=True)
class DatasetPlan:
    """What a generator writes: per split, the ordered sample descriptions (a split without any
    gets no shards), the ``materialise`` and sample kind of ``write_shards``, the shard size, and
    text files ``{name: content}`` written after the shards."""

    splits: Mapping[str, Sequence[Description]]
    materialise: Callable[[Any], Sample]
    kind: Kind
    samples_per_shard: int
    text_files: Mapping[str, str] = field(default_factory=dict)


def generate_dataset(
    directory: str | os.PathLike,
    generator: str,
    arguments: dict,
    plan: DatasetPlan,
    workers: int = 1,
    replace: bool = False,
) -> dict:
    """Reuse, resume or write (module docstring) the dataset ``plan`` describes in ``directory``.

    ``generator`` names the generator and ``arguments`` (JSON-serialisable) are those that
    decide the output; both go into the manifest. ``workers`` processes write shards.

    Returns ``{"root", "manifest": paths, "train", "val", "test": [shard paths]}``.
    Raises ValueError naming ``directory`` when it holds another dataset and not ``replace``.
    """
    directory = Path(directory)
    arguments = json.loads(json.dumps(arguments))  # as the manifest holds them (lists, not tuples)
    with generation_lock(directory):
        manifest = _read_manifest(directory)
        same = manifest is not None and (
            (manifest.get("generator"), manifest.get("arguments")) == (generator, arguments)
        )
        if same and manifest.get("complete") and _all_present(directory, manifest["files"]):
            return _paths(directory, manifest["files"])
        unrecorded = same and not (directory / RECORD).is_file() and bool(_shard_files(directory))
        if (not same or unrecorded) and (manifest is not None or _shard_files(directory)):
            found = "shards without a conversion record" if unrecorded else _describe(manifest)
            if not replace:
                raise ValueError(
                    f"{directory} holds another dataset ({found}), not the "
                    f"{generator} dataset of {arguments}: use another directory, or delete it"
                )
            _remove_dataset(directory, manifest, plan)
        directory.mkdir(parents=True, exist_ok=True)
        _write_manifest(directory, generator, arguments, [], complete=False)
        files = _write(directory, plan, workers)
        _write_manifest(directory, generator, arguments, files, complete=True)
        return _paths(directory, files)


def _write(directory: Path, plan: DatasetPlan, workers: int) -> list[str]:
    """Write ``plan``'s shards and text files; the names of all of them."""
    files = []
    for split in SPLITS:
        descriptions = plan.splits.get(split, ())
        if descriptions:
            paths = write_shards(
                descriptions,
                plan.materialise,
                directory,
                split,
                plan.kind,
                plan.samples_per_shard,
                workers,
            )
            files += [path.name for path in paths]
    for name, text in plan.text_files.items():
        (directory / name).write_text(text)
        files.append(name)
    return files


def _read_manifest(directory: Path) -> dict | None:
    """The manifest; None when there is none, ``{}`` when it is not one of this format."""
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return {}
    if not isinstance(manifest.get("files"), list):
        return {}
    return manifest


def _write_manifest(
    directory: Path, generator: str, arguments: dict, files: list[str], complete: bool
) -> None:
    manifest = {
        "format": MANIFEST_FORMAT,
        "generator": generator,
        "arguments": arguments,
        "complete": complete,
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _describe(manifest: dict | None) -> str:
    if manifest is None:
        return "shards without a manifest.json"
    if not manifest:
        return f"an older or unreadable {MANIFEST}"
    return f"the {manifest.get('generator')} dataset of {manifest.get('arguments')}"


def _all_present(directory: Path, files: list[str]) -> bool:
    return all((directory / name).is_file() for name in files)


def _shard_files(directory: Path) -> list[Path]:
    """The shards, partial shards and conversion record in ``directory``."""
    if not directory.is_dir():
        return []
    patterns = [f"{split}-*.tar" for split in SPLITS] + [f".{split}-*.partial" for split in SPLITS]
    found = [path for pattern in patterns for path in directory.glob(pattern)]
    return found + [path for path in [directory / RECORD] if path.exists()]


def _remove_dataset(directory: Path, manifest: dict | None, plan: DatasetPlan) -> None:
    """Delete the files of the dataset in ``directory`` (module docstring), nothing else."""
    listed = manifest.get("files", []) if manifest else []
    names = {name for name in listed if isinstance(name, str) and Path(name).name == name}
    names |= {MANIFEST, *plan.text_files}
    for path in _shard_files(directory) + [directory / name for name in sorted(names)]:
        path.unlink(missing_ok=True)


def _paths(directory: Path, files: list[str]) -> dict:
    shards = {
        split: [str(directory / name) for name in files if name.startswith(f"{split}-")]
        for split in SPLITS
    }
    return {"root": str(directory), "manifest": str(directory / MANIFEST), **shards}
