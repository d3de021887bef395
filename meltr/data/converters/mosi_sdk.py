"""Read CMU-MOSI from the CMU-MultimodalSDK's computational sequences (``.csd``) into the
utterances ``meltr.data.converters.mosi`` writes (the same shards as from MMSA's pickles).

A ``.csd`` file is HDF5 with one top-level group (the sequence's root name) holding
``data/<video_id>/features`` ``[T, D]`` and ``data/<video_id>/intervals`` ``[T, 2]`` (start and end
in seconds, one row per feature row), and ``metadata/<key>`` (JSON strings; not needed here).
The files read, from ``sdk_dir`` (the SDK's download names; ``vision_file`` picks another visual
sequence, e.g. ``CMU_MOSI_Visual_Facet_42.csd``):

- ``CMU_MOSI_Opinion_Labels.csd``: per video, one row per opinion segment (an utterance): its
  interval and its sentiment score in [-3, 3];
- ``CMU_MOSI_TimestampedWords.csd``: per video, one row per word (bytes ``[W, 1]``), ``sp``
  marking silences;
- ``CMU_MOSI_Visual_Facet_41.csd`` (vision) and ``CMU_MOSI_COVAREP.csd`` (audio): frame rows.

Splits come from ``folds_file``, a JSON ``{"train": [video ids], "valid": [...], "test": [...]}``
(the SDK's standard folds, e.g. ``json.dump({"train": standard_train_fold, "valid":
standard_valid_fold, "test": standard_test_fold}, ...)`` from its ``cmu_mosi_std_folds``);
``valid`` becomes ``val``.

Each opinion segment ``i`` of a video becomes the utterance ``<video>[<i>]`` (the SDK's key
after aligning to the labels). Its words are the non-silence words overlapping the segment;
its text is their join. Alignment follows the SDK's ``align`` (a row belongs to an interval when
their overlap is longer than ``EPSILON`` seconds), as MMSA's pickles were made:

- ``aligned_50``: one row per word, the first ``MAX_WORDS`` words: the mean of the feature rows
  overlapping the word (the SDK's align to the words with an average collapse), a zero row
  where none overlaps (the SDK's zero imputation); ``vision+audio`` puts the two side by side;
- ``unaligned_50``: the feature rows overlapping the segment (at least one row: a zero row when
  none does), vision only.

Non-finite entries become 0 (counted). A fold video missing from a file, a segment without
words and a non-finite label are listed as missing items.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from meltr.data.converters.mosi import (
    FEATURES,
    LAYOUTS,
    SPLITS,
    MosiPlan,
    add_utterance,
    finite_rows,
)
from meltr.data.converters.release_files import MissingItem

SDK_FILES = {
    "labels": "CMU_MOSI_Opinion_Labels.csd",
    "words": "CMU_MOSI_TimestampedWords.csd",
    "vision": "CMU_MOSI_Visual_Facet_41.csd",
    "audio": "CMU_MOSI_COVAREP.csd",
}
SILENCE = "sp"
EPSILON = 1e-5  # seconds: the SDK's tolerance when it compares intervals
MAX_WORDS = 50

Sequence = dict[str, tuple[np.ndarray, np.ndarray]]  # video id -> (intervals [T, 2], features)


def read_csd(path: str | os.PathLike) -> Sequence:
    """``{video_id: (intervals float [T, 2], features [T, D])}`` of one ``.csd`` file.
    FileNotFoundError or ValueError naming the file and the entry that does not fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no computational sequence {path}")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not an HDF5 computational sequence: {error}") from None
    with handle:
        roots = list(handle.keys())
        if len(roots) != 1 or "data" not in handle[roots[0]]:
            raise ValueError(f"{path}: expected one group holding 'data', found {roots}")
        sequence = {}
        for video_id, entry in handle[roots[0]]["data"].items():
            if "intervals" not in entry or "features" not in entry:
                raise ValueError(f"{path}: data/{video_id} lacks 'intervals' or 'features'")
            intervals = np.asarray(entry["intervals"][()], dtype=np.float64)
            features = entry["features"][()]
            if intervals.ndim != 2 or intervals.shape[1] != 2 or len(features) != len(intervals):
                raise ValueError(
                    f"{path}: data/{video_id} has intervals {intervals.shape} for "
                    f"{len(features)} feature rows (expected [{len(features)}, 2])"
                )
            sequence[video_id] = (intervals, features.reshape(len(features), -1))
    return sequence


def read_folds(path: str | os.PathLike) -> dict[str, str]:
    """``{video_id: split}`` from the folds JSON (module docstring)."""
    folds = json.loads(Path(path).read_text())
    if not isinstance(folds, dict) or sorted(folds) != sorted(SPLITS):
        raise ValueError(f"{path}: expected a JSON object with the keys {list(SPLITS)}")
    return {str(video): SPLITS[fold] for fold, videos in folds.items() for video in videos}


def overlaps(intervals: np.ndarray, start: float, end: float) -> np.ndarray:
    """Which rows of ``intervals`` ``[T, 2]`` overlap ``[start, end]`` for more than EPSILON."""
    overlap = np.minimum(intervals[:, 1], end) - np.maximum(intervals[:, 0], start)
    return overlap > EPSILON


def word_rows(word_intervals: np.ndarray, intervals: np.ndarray, features: np.ndarray):
    """``[W, D]``: per word, the mean of the feature rows overlapping it (zeros where none)."""
    rows = np.zeros((len(word_intervals), features.shape[1]))
    for w, (start, end) in enumerate(word_intervals):
        inside = overlaps(intervals, start, end)
        if inside.any():
            rows[w] = features[inside].astype(np.float64).mean(axis=0)
    return rows


def plan_mosi_sdk(
    sdk_dir: str | os.PathLike,
    folds_file: str | os.PathLike,
    layout: str = "aligned_50",
    features: str = "vision",
    vision_file: str | None = None,
) -> MosiPlan:
    """The utterances of the SDK files in ``sdk_dir`` (module docstring)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if features == "vision+audio" and layout != "aligned_50":
        raise ValueError("features='vision+audio' needs layout='aligned_50' (one row per word)")
    names = SDK_FILES | ({"vision": vision_file} if vision_file else {})
    modalities = ["vision", "audio"] if features == "vision+audio" else ["vision"]
    sequences = {
        name: read_csd(Path(sdk_dir) / names[name]) for name in ["labels", "words", *modalities]
    }
    plan = MosiPlan(utterances={split: [] for split in SPLITS.values()})
    for video_id, split in read_folds(folds_file).items():
        absent = [names[name] for name, sequence in sequences.items() if video_id not in sequence]
        if absent:
            plan.missing.append(MissingItem(video_id, split, f"not in {', '.join(absent)}"))
            continue
        _add_video(plan, video_id, split, sequences, modalities, layout)
    return plan


def _add_video(
    plan: MosiPlan,
    video_id: str,
    split: str,
    sequences: dict[str, Sequence],
    modalities: list[str],
    layout: str,
) -> None:
    segments, labels = sequences["labels"][video_id]
    word_intervals, words = sequences["words"][video_id]
    words = np.array([_text(word) for word in words[:, 0]], dtype=object)
    spoken = words != SILENCE
    word_intervals, words = word_intervals[spoken], words[spoken]
    for i, (start, end) in enumerate(segments):
        utterance_id = f"{video_id}[{i}]"
        inside = overlaps(word_intervals, start, end)
        if layout == "aligned_50":
            kept = word_intervals[inside][:MAX_WORDS]
            rows = [word_rows(kept, *sequences[name][video_id]) for name in modalities]
            rows = np.concatenate(rows, axis=1)
        else:
            intervals, frames = sequences["vision"][video_id]
            rows = frames[overlaps(intervals, start, end)]
            rows = rows if len(rows) else np.zeros((1, frames.shape[1]))
        text = " ".join(words[inside])
        if not text:
            plan.missing.append(MissingItem(utterance_id, split, "no words in the segment"))
            continue
        label = float(np.asarray(labels[i], dtype=np.float64).reshape(-1)[0])
        add_utterance(plan, split, utterance_id, text, label, finite_rows(plan, rows))


def _text(word: object) -> str:
    return word.decode("utf-8") if isinstance(word, bytes) else str(word)
