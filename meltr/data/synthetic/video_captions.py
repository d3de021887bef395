"""The generated video-text dataset: clips of moving shapes (``moving_shapes``) with captions.

Train clips carry several distinct captions, validation and test clips exactly one. Every clip is a
pure function of ``(seed, split, index)`` and the rendering arguments, so the same arguments always
give the same bytes, whatever the number of workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from meltr.data.cache import cache_folder
from meltr.data.decoders import VideoCaptions
from meltr.data.synthetic.generation import (
    DatasetPlan,
    check_minimums,
    generate_dataset,
    item_rng,
    text_lines,
)
from meltr.data.synthetic.moving_shapes import (
    CODECS,
    COMBINATIONS,
    PHRASINGS,
    build_vocab,
    describe_scene,
    encode_mp4,
    render_scene,
    sample_scene,
)
from meltr.data.writer import Sample


@dataclass(frozen=True)
class ClipDescription:
    """The recipe of one clip (see ``write_shards``): everything ``materialise_clip`` needs."""

    key: str
    split: str
    index: int
    seed: int
    num_frames: int
    size: int
    fps: int
    codec: str
    num_captions: int
    combinations: str = "all"
    phrasing: str = "all"


def materialise_clip(description: ClipDescription) -> Sample:
    """Render, caption and encode one clip (the ``materialise`` of ``write_shards``)."""
    d = description
    rng = item_rng(d.seed, d.split, d.index)
    scene = sample_scene(rng, d.size, d.combinations)
    captions: list[str] = []
    for _ in range(20 * d.num_captions):  # distinct captions; the grammar has thousands per scene
        caption = describe_scene(scene, rng, d.phrasing)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == d.num_captions:
            break
    mp4 = encode_mp4(render_scene(scene, d.num_frames, d.size), d.fps, d.codec)
    return {
        "__key__": d.key,
        "mp4": mp4,
        "json": {"video_id": d.key, "captions": captions, "split": d.split},
    }


def generate_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 2048,
    num_test: int = 256,
    num_val: int = 0,
    num_frames: int = 8,
    size: int = 64,
    fps: int = 8,
    seed: int = 0,
    captions_per_train_video: int = 5,
    samples_per_shard: int = 256,
    codec: str = "mpeg4",
    combinations: str = "all",
    phrasing: str = "all",
    workers: int = 1,
    replace: bool = False,
) -> dict:
    """Write the dataset into ``out_dir``: train / val / test shards, ``vocab.txt`` and
    ``manifest.json``; reused or resumed as ``meltr.data.synthetic.generation`` says.

    ``combinations`` ("all", "seen", "unseen"; see ``moving_shapes.is_unseen_pair``) restricts the
    (shape, colour) pairs every split shows, ``phrasing`` ("all", "pretrain", "downstream") the
    caption templates; the vocabulary is the same for all of them. ``workers`` processes write
    shards in parallel; it does not change the output.

    Returns ``{"root", "vocab", "manifest": str, "train", "val", "test": [shard paths]}``.
    Raises ValueError for a bad argument (named), or for ``out_dir`` holding another dataset
    unless ``replace``.
    """
    arguments = {
        "num_train": num_train,
        "num_test": num_test,
        "num_val": num_val,
        "num_frames": num_frames,
        "size": size,
        "fps": fps,
        "seed": seed,
        "captions_per_train_video": captions_per_train_video,
        "samples_per_shard": samples_per_shard,
        "codec": codec,
        "combinations": combinations,
        "phrasing": phrasing,
    }
    _check_arguments(arguments)
    splits = _clip_descriptions(arguments)
    vocab = {"vocab.txt": text_lines(build_vocab())}
    plan = DatasetPlan(splits, materialise_clip, VideoCaptions, samples_per_shard, vocab)
    paths = generate_dataset(out_dir, "synthetic", arguments, plan, workers, replace)
    return paths | {"vocab": os.path.join(paths["root"], "vocab.txt")}


def ensure_synthetic_dataset(cache_dir: str | os.PathLike, **kwargs) -> dict:
    """``generate_synthetic_dataset(cache_dir, replace=True, **kwargs)``: the dataset with these
    arguments in ``cache_dir``, replacing another one there."""
    return generate_synthetic_dataset(cache_dir, replace=True, **kwargs)


def _clip_descriptions(arguments: dict) -> dict[str, list[ClipDescription]]:
    """Per split, the descriptions of its clips (``synth-<split>-<index>``) rendered as
    ``arguments`` (``generate_synthetic_dataset``'s, checked) say; training clips carry
    ``captions_per_train_video`` captions, the others one."""
    rendering = {
        key: arguments[key]
        for key in ("num_frames", "size", "fps", "codec", "seed", "combinations", "phrasing")
    }
    splits = {}
    for split, count, num_captions in (
        ("train", arguments["num_train"], arguments["captions_per_train_video"]),
        ("val", arguments["num_val"], 1),
        ("test", arguments["num_test"], 1),
    ):
        splits[split] = [
            ClipDescription(
                f"synth-{split}-{i:06d}", split, i, num_captions=num_captions, **rendering
            )
            for i in range(count)
        ]
    return splits


def _check_arguments(arguments: dict) -> None:
    minimum = {"num_train": 0, "num_test": 0, "num_val": 0, "num_frames": 2, "size": 16, "fps": 1}
    check_minimums(arguments, minimum | {"captions_per_train_video": 1, "samples_per_shard": 1})
    if arguments["size"] % 2:
        raise ValueError(f"size must be even (yuv420p), got {arguments['size']}")
    choices = {"codec": CODECS, "combinations": COMBINATIONS, "phrasing": tuple(PHRASINGS)}
    for name, allowed in choices.items():
        if arguments[name] not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {arguments[name]!r}")


def cached_synthetic_dataset(
    num_train: int = 512,
    num_test: int = 128,
    num_val: int = 64,
    num_frames: int = 4,
    size: int = 32,
    seed: int = 0,
    combinations: str = "all",
    phrasing: str = "all",
    workers: int = 2,
) -> dict:
    """The synthetic video dataset with these arguments, generated into ``cache_root() /
    synthetic-<arguments>`` if absent. Returns ``generate_synthetic_dataset``'s paths."""
    arguments = dict(num_train=num_train, num_val=num_val, num_test=num_test)
    arguments |= dict(num_frames=num_frames, size=size, seed=seed)
    labels = [value for value in (combinations, phrasing) if value != "all"]
    directory = cache_folder("synthetic", arguments, labels)
    named = dict(combinations=combinations, phrasing=phrasing)
    return generate_synthetic_dataset(
        directory, workers=workers, replace=True, **arguments, **named
    )
