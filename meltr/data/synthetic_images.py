"""A procedural image-classification dataset (the built-in stand-in for CIFAR).

Each image shows one object on a background that is lighter at the top than at the bottom (a
"sky" over a "ground", so that an upright image can be told from a rotated one). The class is the
object's shape and fill: ``circle``, ``square``, ``triangle`` (pointing up), ``cross`` or ``ring``,
each ``solid`` or ``striped``: 10 classes. Colours, position, size, stripe angle and period,
background tone, a small distracting blob and the pixel noise vary at random and carry no class
information, so the classifier must see the shape.

Images are uint8 ``[size, size, 3]``, rendered at twice the size and averaged down (anti-aliased).
Every image is a pure function of ``(seed, split, index)``; the dataset is written as
``image_label`` shards (``meltr.data.decoders.ImageLabel``) with train, val and test splits.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meltr.data.cache import cache_root, generation_lock
from meltr.data.decoders import ImageLabel
from meltr.data.writer import Sample, write_shards

SHAPES = ("circle", "square", "triangle", "cross", "ring")
FILLS = ("solid", "striped")
CLASSES = tuple(f"{fill} {shape}" for shape in SHAPES for fill in FILLS)
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
MANIFEST_FORMAT = "meltr-synthetic-images-v1"


@dataclass(frozen=True)
class ImageDescription:
    """The recipe of one image (see ``write_shards``)."""

    key: str
    split: str
    index: int
    size: int
    seed: int


def _shape_mask(shape: str, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of ``shape`` centred at the origin of the coordinate grids ``x``, ``y``."""
    distance = np.hypot(x, y)
    if shape == "circle":
        return distance <= radius
    if shape == "ring":
        return (distance <= radius) & (distance >= 0.55 * radius)
    if shape == "square":
        side = 0.85 * radius
        return (np.abs(x) <= side) & (np.abs(y) <= side)
    if shape == "cross":
        arm = 0.33 * radius
        return ((np.abs(x) <= arm) & (np.abs(y) <= radius)) | (
            (np.abs(y) <= arm) & (np.abs(x) <= radius)
        )
    # triangle pointing up (y grows downwards): apex at -radius, base at +0.7 radius
    top, bottom = -radius, 0.7 * radius
    half_width = (y - top) / (bottom - top) * radius
    return (y >= top) & (y <= bottom) & (np.abs(x) <= half_width)


def render_image(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 ``[size, size, 3]`` image of class ``label`` (``CLASSES[label]``)."""
    shape, fill = SHAPES[label // len(FILLS)], FILLS[label % len(FILLS)]
    fine = 2 * size
    y, x = np.mgrid[0:fine, 0:fine].astype(np.float64)
    sky, ground = rng.uniform(150, 230, 3), rng.uniform(20, 100, 3)
    height = (y / (fine - 1))[..., None]
    image = sky * (1 - height) + ground * height
    radius = rng.uniform(0.18, 0.34) * fine
    centre = rng.uniform(radius, fine - radius, 2)
    mask = _shape_mask(shape, x - centre[0], y - centre[1], radius)
    colour = rng.uniform(0, 255, 3)
    if fill == "striped":
        angle, period = rng.uniform(0, np.pi), fine / rng.uniform(4, 8)
        stripes = ((x * np.cos(angle) + y * np.sin(angle)) % period) < period / 2
        painted = np.where(stripes[..., None], colour, rng.uniform(0, 255, 3))
    else:
        painted = np.broadcast_to(colour, image.shape)
    image = np.where(mask[..., None], painted, image)
    blob_radius, blob_centre = rng.uniform(0.06, 0.12) * fine, rng.uniform(0, fine, 2)
    blob = np.hypot(x - blob_centre[0], y - blob_centre[1]) <= blob_radius
    image = np.where(blob[..., None], rng.uniform(0, 255, 3), image)
    image = image.reshape(size, 2, size, 2, 3).mean(axis=(1, 3))
    image += rng.normal(0, rng.uniform(4, 20), image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image, independent of every other image."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def materialise_image(description: ImageDescription) -> Sample:
    """Draw the class and render one image (the ``materialise`` of ``write_shards``)."""
    d = description
    rng = image_rng(d.seed, d.split, d.index)
    label = int(rng.integers(len(CLASSES)))
    return {
        "__key__": d.key,
        "image.npy": render_image(label, rng, d.size),
        "json": {"image_id": d.key, "label": label, "split": d.split},
    }


def generate_synthetic_images(
    out_dir: str | os.PathLike,
    num_train: int = 5000,
    num_val: int = 1000,
    num_test: int = 1000,
    size: int = 32,
    seed: int = 0,
    samples_per_shard: int = 1000,
    workers: int = 1,
) -> dict:
    """Write the dataset (train / val / test shards, ``classes.json``, ``manifest.json``) into
    ``out_dir``, or return it as it is when a complete one with the same arguments is there.

    Returns ``{"root": str, "classes": [names], "train" / "val" / "test": [shard paths]}``.
    ValueError for a bad argument (named) or shards of other arguments in ``out_dir``.
    """
    arguments = dict(num_train=num_train, num_val=num_val, num_test=num_test, size=size)
    arguments |= dict(seed=seed, samples_per_shard=samples_per_shard)
    for name, value in arguments.items():
        low = 8 if name == "size" else (1 if name in ("num_train", "samples_per_shard") else 0)
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    if manifest is not None and manifest.get("arguments") != arguments:
        raise ValueError(
            f"{out_dir} holds synthetic images generated with other arguments "
            f"({manifest.get('arguments')}); use another directory"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(
        json.dumps({"format": MANIFEST_FORMAT, "arguments": arguments}, indent=2) + "\n"
    )
    paths: dict = {"root": str(out_dir), "classes": list(CLASSES)}
    for split, count in (("train", num_train), ("val", num_val), ("test", num_test)):
        descriptions = [
            ImageDescription(f"img-{split}-{i:06d}", split, i, size, seed) for i in range(count)
        ]
        paths[split] = [
            str(path)
            for path in write_shards(
                descriptions,
                materialise_image,
                out_dir,
                split,
                ImageLabel,
                samples_per_shard,
                workers,
            )
        ]
    (out_dir / "classes.json").write_text(json.dumps(list(CLASSES)) + "\n")
    return paths


def cached_synthetic_images(
    num_train: int = 5000,
    num_val: int = 1000,
    num_test: int = 1000,
    size: int = 32,
    seed: int = 0,
    workers: int = 2,
) -> dict:
    """The synthetic image dataset with these arguments, generated into ``cache_root() /
    synthetic-images-<arguments>`` if absent. Returns ``generate_synthetic_images``'s paths."""
    arguments = dict(num_train=num_train, num_val=num_val, num_test=num_test, size=size, seed=seed)
    suffix = "-".join(f"{name}{value}" for name, value in sorted(arguments.items()))
    directory = cache_root() / f"synthetic-images-{suffix}"
    with generation_lock(directory):
        return generate_synthetic_images(directory, workers=workers, **arguments)
