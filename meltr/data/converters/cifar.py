"""Convert the official CIFAR python releases into ``image_label`` shards (docs/ARCHITECTURE.md).

Expected layout of ``root`` (either release, or its parent directory)::

    cifar-100-python/     train, test, meta
        (b"fine_labels" / b"coarse_labels"; meta b"fine_label_names" / b"coarse_label_names")
    cifar-10-batches-py/  data_batch_1..5, test_batch, batches.meta
        (b"labels"; meta b"label_names")

Each pickle (read with ``encoding="bytes"``) holds ``b"data"``, uint8 ``[N, 3072]`` as the R, G
and B planes of a 32 x 32 image, the labels and ``b"filenames"``. The class names and their count
come from the meta file and are written to ``classes.json`` beside the shards. A validation split
of ``val_size`` training images is carved out of the training set (a seeded random choice); the
test set is the release's.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meltr.data.decoders import ImageLabel
from meltr.data.writer import Sample, write_shards

RELEASES = {
    "cifar-100": {
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "meta": "meta",
    },
    "cifar-10": {
        "folder": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "meta": "batches.meta",
    },
}


class CifarFormatError(ValueError):
    """A release file that is missing or not in the documented format (the message names it)."""


@dataclass(frozen=True)
class CifarImage:
    """One image to write (a ``write_shards`` description): ``key`` is its position in the
    release's split and its file name without the extension, ``index`` its row in ``images``."""

    key: str
    split: str
    label: int
    images: np.ndarray
    index: int


def find_release(root: str | os.PathLike) -> tuple[str, Path]:
    """``(release name, its folder)`` under or at ``root``; CifarFormatError naming what is
    missing."""
    root = Path(root)
    if not root.is_dir():
        raise CifarFormatError(f"--root {root} is not a directory")
    for name, release in RELEASES.items():
        for folder in (root / release["folder"], root):
            if all((folder / file).is_file() for file in (*release["train"], release["meta"])):
                return name, folder
    expected = " or ".join(
        f"{release['folder']}/ with {', '.join((*release['train'], release['meta']))}"
        for release in RELEASES.values()
    )
    raise CifarFormatError(f"{root} holds no CIFAR python release: expected {expected}")


def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise CifarFormatError(f"{path} does not exist")
    try:
        with path.open("rb") as file:
            content = pickle.load(file, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise CifarFormatError(f"{path} is not a CIFAR pickle: {error}") from error
    if not isinstance(content, dict):
        raise CifarFormatError(f"{path} holds a {type(content).__name__}, not a dict")
    return content


def _entry(content: dict, key: bytes, path: Path) -> object:
    if key not in content:
        raise CifarFormatError(f"{path} lacks {key!r} (it has {sorted(content)})")
    return content[key]


def class_names(release: str, folder: Path, labels: str) -> list[str]:
    """The class names, in label order, from the release's meta file."""
    path = folder / RELEASES[release]["meta"]
    key = b"label_names" if release == "cifar-10" else f"{labels}_label_names".encode()
    names = _entry(_unpickle(path), key, path)
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def read_batch(path: Path, release: str, labels: str) -> tuple[np.ndarray, list[int], list[str]]:
    """``(images uint8 [N, 32, 32, 3], labels, file names)`` of one release pickle."""
    content = _unpickle(path)
    data = np.asarray(_entry(content, b"data", path))
    label_key = b"labels" if release == "cifar-10" else f"{labels}_labels".encode()
    targets = [int(label) for label in _entry(content, label_key, path)]
    names = [
        name.decode() if isinstance(name, bytes) else str(name)
        for name in _entry(content, b"filenames", path)
    ]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise CifarFormatError(f"{path}: b'data' is {data.dtype} {data.shape}, not uint8 [N, 3072]")
    if not len(data) == len(targets) == len(names):
        raise CifarFormatError(
            f"{path}: {len(data)} images, {len(targets)} labels, {len(names)} file names"
        )
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), targets, names


def plan_cifar(
    root: str | os.PathLike, labels: str = "fine", val_size: int = 5000, seed: int = 0
) -> dict:
    """What ``convert_cifar`` writes: ``{"release", "classes", "train", "val", "test"}`` (lists of
    CifarImage). CifarFormatError naming the file for anything missing or malformed."""
    if labels not in ("fine", "coarse"):
        raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
    release, folder = find_release(root)
    classes = class_names(release, folder, labels)
    plan: dict = {"release": release, "classes": classes}
    for split in ("train", "test"):
        images = []
        for file in RELEASES[release][split]:
            data, targets, names = read_batch(folder / file, release, labels)
            bad = [label for label in targets if not 0 <= label < len(classes)]
            if bad:
                raise CifarFormatError(
                    f"{folder / file}: label {bad[0]} outside the {len(classes)} classes"
                )
            images += [
                CifarImage(f"{len(images) + row:05d}-{Path(name).stem}", split, label, data, row)
                for row, (label, name) in enumerate(zip(targets, names, strict=True))
            ]
        plan[split] = images
    if not 0 <= val_size < len(plan["train"]):
        raise ValueError(f"val_size must be in [0, {len(plan['train'])}), got {val_size}")
    chosen = set(np.random.default_rng(seed).permutation(len(plan["train"]))[:val_size].tolist())
    plan["val"] = [
        CifarImage(image.key, "val", image.label, image.images, image.index)
        for position, image in enumerate(plan["train"])
        if position in chosen
    ]
    plan["train"] = [
        image for position, image in enumerate(plan["train"]) if position not in chosen
    ]
    return plan


def materialise_image(image: CifarImage) -> Sample:
    """The shard sample of one image."""
    return {
        "__key__": image.key,
        "image.npy": image.images[image.index],
        "json": {"image_id": image.key, "label": image.label, "split": image.split},
    }


def convert_cifar(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    labels: str = "fine",
    val_size: int = 5000,
    seed: int = 0,
    samples_per_shard: int = 5000,
) -> dict:
    """Write ``train-*.tar``, ``val-*.tar`` (when ``val_size``), ``test-*.tar`` and
    ``classes.json`` for the release at ``root``; resumable (complete shards are kept). Returns
    ``{"release", "classes", "train" / "val" / "test": [shard paths]}``."""
    plan = plan_cifar(root, labels, val_size, seed)
    out_dir = Path(out_dir)
    result = {"release": plan["release"], "classes": plan["classes"]}
    for split in ("train", "val", "test"):
        result[split] = (
            write_shards(
                plan[split], materialise_image, out_dir, split, ImageLabel, samples_per_shard
            )
            if plan[split]
            else []
        )
    (out_dir / "classes.json").write_text(json.dumps(plan["classes"]) + "\n")
    return result
