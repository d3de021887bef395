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

import numpy as np

from meltr.data.cache import cache_folder
from meltr.data.decoders import ImageLabel
from meltr.data.synthetic.drawing import shape_mask
from meltr.data.synthetic.generation import (
    DatasetPlan,
    check_minimums,
    generate_dataset,
    item_rng,
)
from meltr.data.writer import Sample

SHAPES = ("circle", "square", "triangle", "cross", "ring")
FILLS = ("solid", "striped")
CLASSES = tuple(f"{fill} {shape}" for shape in SHAPES for fill in FILLS)
# The images' own split codes (not the clips') and proportions: a square of side 1.7 radius, a
# triangle 1.7 radius high (apex at -radius, base at +0.7 radius).
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
SQUARE_SCALE = 0.85
TRIANGLE_BASE = 0.7


@dataclass(frozen=True)
class ImageDescription:
    """The recipe of one image (see ``write_shards``)."""

    key: str
    split: str
    index: int
    size: int
    seed: int


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
    scale = SQUARE_SCALE if shape == "square" else 1.0
    mask = shape_mask(shape, x - centre[0], y - centre[1], scale * radius, TRIANGLE_BASE)
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


def materialise_image(description: ImageDescription) -> Sample:
    """Draw the class and render one image (the ``materialise`` of ``write_shards``)."""
    d = description
    rng = item_rng(d.seed, d.split, d.index, SPLIT_CODES)
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
    replace: bool = False,
) -> dict:
    """Write the dataset (train / val / test shards, ``classes.json``, ``manifest.json``) into
    ``out_dir``; reused or resumed as ``meltr.data.synthetic.generation`` says.

    Returns ``{"root", "manifest": paths, "classes": [names], "train" / "val" / "test": [shard
    paths]}``. ValueError for a bad argument (named), or for ``out_dir`` holding another dataset
    unless ``replace``.
    """
    arguments = dict(num_train=num_train, num_val=num_val, num_test=num_test, size=size)
    arguments |= dict(seed=seed, samples_per_shard=samples_per_shard)
    minimum = dict(num_train=1, num_val=0, num_test=0, size=8, seed=0, samples_per_shard=1)
    check_minimums(arguments, minimum)
    splits = {
        split: [
            ImageDescription(f"img-{split}-{i:06d}", split, i, size, seed) for i in range(count)
        ]
        for split, count in (("train", num_train), ("val", num_val), ("test", num_test))
    }
    classes = {"classes.json": json.dumps(list(CLASSES)) + "\n"}
    plan = DatasetPlan(splits, materialise_image, ImageLabel, samples_per_shard, classes)
    paths = generate_dataset(out_dir, "synthetic-images", arguments, plan, workers, replace)
    return paths | {"classes": list(CLASSES)}


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
    directory = cache_folder("synthetic-images", arguments)
    return generate_synthetic_images(directory, workers=workers, replace=True, **arguments)
