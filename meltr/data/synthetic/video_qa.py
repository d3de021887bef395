"""A generated video question-answering dataset on the clips of ``moving_shapes``.

Each clip (the same scene sampling and rendering as the captions dataset) gets one question:

- ``question="colour"`` (open-ended): "what colour is the small circle moving left ?", answered
  by one of the seven colour names (the answer vocabulary, ``answers.txt``);
- ``question="direction"`` (multiple choice): "which way does the small red circle move ?",
  options ``left``, ``right``, ``up``, ``down``.

The other words of the question describe the clip, so that masked-token modelling and
video-text matching on the question carry signal. Samples are ``VideoQA`` shards with a ``vq.npy``
member of visual-token codes for masked visual modelling. These codes are NOT the DALL-E dVAE's
(no such encoder is available offline): they are a cheap deterministic stand-in, the mean colour
of each cell of a ``grid x grid`` partition of every frame with each channel quantised to
``levels`` levels (``levels ** 3`` codes), computed from the rendered frames before encoding.

Every clip is a pure function of ``(seed, split, index)`` and the arguments; ``cached_synthetic_qa``
generates the dataset once into ``cache_root() / synthetic-qa-<arguments>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from meltr.data.cache import cache_folder
from meltr.data.decoders import VideoQA
from meltr.data.synthetic.generation import (
    DatasetPlan,
    check_minimums,
    generate_dataset,
    item_rng,
    text_lines,
)
from meltr.data.synthetic.moving_shapes import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    SIZES,
    encode_mp4,
    render_scene,
    sample_scene,
)
from meltr.data.synthetic.words import SPECIAL_TOKENS, caption_words
from meltr.data.writer import Sample

QUESTIONS = ("colour", "direction")
COLOUR_ANSWERS = tuple(COLOURS)
DIRECTION_OPTIONS = tuple(DIRECTIONS)


def colour_question(scene) -> str:
    return f"what colour is the {scene.size} {scene.shape} moving {scene.direction} ?"


def direction_question(scene) -> str:
    return f"which way does the {scene.size} {scene.colour} {scene.shape} move ?"


def colour_codes(frames: np.ndarray, grid: int, levels: int) -> np.ndarray:
    """int16 ``[T, grid, grid]``: per cell of each uint8 ``[T, S, S, 3]`` frame (S a multiple of
    ``grid``), its mean colour with each channel quantised to ``min(levels - 1, floor(mean *
    levels / 256))``, coded ``(r * levels + g) * levels + b``."""
    frames_count, side = frames.shape[0], frames.shape[1]
    if side % grid:
        raise ValueError(f"frame side {side} is not a multiple of the grid {grid}")
    cell = side // grid
    means = frames.reshape(frames_count, grid, cell, grid, cell, 3).mean(axis=(2, 4))
    bins = np.minimum(levels - 1, np.floor(means * levels / 256.0)).astype(np.int64)
    return ((bins[..., 0] * levels + bins[..., 1]) * levels + bins[..., 2]).astype(np.int16)


def qa_vocab() -> list[str]:
    """BERT-format vocabulary of every question and answer: specials first, then the words."""
    words = {"what", "colour", "is", "the", "moving", "which", "way", "does", "move", "?"}
    words |= set(COLOURS) | set(DIRECTIONS) | set(SHAPES) | set(SIZES)
    assert all(caption_words(word) == [word] for word in words - {"?"})
    return list(SPECIAL_TOKENS) + sorted(words)


@dataclass(frozen=True)
class QAClip:
    """The recipe of one sample (see ``write_shards``)."""

    key: str
    split: str
    index: int
    seed: int
    question: str
    num_frames: int
    size: int
    fps: int
    grid: int
    levels: int


def materialise_qa_clip(clip: QAClip) -> Sample:
    """Render, question and encode one clip; its colour codes as ``vq.npy``."""
    scene = sample_scene(item_rng(clip.seed, clip.split, clip.index), clip.size)
    frames = render_scene(scene, clip.num_frames, clip.size)
    record = {"video_id": clip.key, "split": clip.split}
    if clip.question == "colour":
        record |= {
            "question": colour_question(scene),
            "answer": scene.colour,
            "answer_index": COLOUR_ANSWERS.index(scene.colour),
        }
    else:
        record |= {
            "question": direction_question(scene),
            "options": list(DIRECTION_OPTIONS),
            "answer": scene.direction,
            "answer_index": DIRECTION_OPTIONS.index(scene.direction),
        }
    return {
        "__key__": clip.key,
        "mp4": encode_mp4(frames, clip.fps),
        "json": record,
        "vq.npy": colour_codes(frames, clip.grid, clip.levels),
    }


def generate_synthetic_qa(
    out_dir: str | os.PathLike,
    question: str = "colour",
    num_train: int = 512,
    num_val: int = 64,
    num_test: int = 128,
    num_frames: int = 4,
    size: int = 32,
    fps: int = 8,
    seed: int = 0,
    grid: int = 4,
    levels: int = 4,
    samples_per_shard: int = 256,
    workers: int = 1,
    replace: bool = False,
) -> dict:
    """Write the QA dataset into ``out_dir`` (shards, ``vocab.txt``, ``answers.txt``,
    ``manifest.json``); reused or resumed as ``meltr.data.synthetic.generation`` says.

    Returns ``{"root", "vocab", "answers", "manifest": paths, "train", "val", "test": shard
    lists}``. Raises ValueError for a bad argument (named), or for ``out_dir`` holding another
    dataset unless ``replace``.
    """
    if question not in QUESTIONS:
        raise ValueError(f"question must be one of {QUESTIONS}, got {question!r}")
    arguments = dict(question=question, num_train=num_train, num_val=num_val, num_test=num_test)
    arguments |= dict(num_frames=num_frames, size=size, fps=fps, seed=seed, grid=grid)
    arguments |= dict(levels=levels, samples_per_shard=samples_per_shard)
    minimum = dict(num_train=1, num_val=0, num_test=1, num_frames=2, grid=1, levels=2)
    check_minimums(arguments, minimum | dict(size=2, fps=1, seed=0, samples_per_shard=1))
    if size % 2 or size % grid:
        raise ValueError(f"size must be even and a multiple of grid={grid}, got {size}")
    common = dict(seed=seed, question=question, num_frames=num_frames, size=size, fps=fps)
    common |= dict(grid=grid, levels=levels)
    splits = {
        split: [QAClip(f"qa-{split}-{i:06d}", split, i, **common) for i in range(count)]
        for split, count in (("train", num_train), ("val", num_val), ("test", num_test))
    }
    answers = COLOUR_ANSWERS if question == "colour" else DIRECTION_OPTIONS
    text_files = {"vocab.txt": text_lines(qa_vocab()), "answers.txt": text_lines(answers)}
    plan = DatasetPlan(splits, materialise_qa_clip, VideoQA, samples_per_shard, text_files)
    paths = generate_dataset(out_dir, "synthetic-qa", arguments, plan, workers, replace)
    root = paths["root"]
    return paths | {name: os.path.join(root, f"{name}.txt") for name in ("vocab", "answers")}


def cached_synthetic_qa(
    question: str = "colour",
    num_train: int = 512,
    num_val: int = 64,
    num_test: int = 128,
    num_frames: int = 4,
    size: int = 32,
    seed: int = 0,
    workers: int = 2,
) -> dict:
    """The QA dataset with these arguments, generated into ``cache_root() /
    synthetic-qa-<arguments>`` if absent. Returns ``generate_synthetic_qa``'s paths."""
    arguments = dict(question=question, num_train=num_train, num_val=num_val)
    arguments |= dict(num_test=num_test, num_frames=num_frames, size=size, seed=seed)
    directory = cache_folder("synthetic-qa", arguments)
    return generate_synthetic_qa(directory, workers=workers, replace=True, **arguments)
