"""Convert UniVL's MSRVTT feature release into shards of the feature + text kind.

Expected layout of ``root`` (``msrvtt.zip`` of the UniVL release)::

    MSRVTT_data.json                  {"videos": [{"video_id": "video0", ...}, ...],
                                       "sentences": [{"video_id", "caption", "sen_id"}, ...]}
    MSRVTT_train.9k.csv, MSRVTT_train.7k.csv   column video_id (retrieval training videos)
    MSRVTT_JSFUSION_test.csv          columns video_id,sentence (the 1000 retrieval test pairs)
    msrvtt_videos_features.pickle     {video_id: float [T_seconds, 1024]} (S3D, 1/s)

Layouts written (``layout``):

- ``"retrieval-9k"`` / ``"retrieval-7k"``: ``train`` = the csv's videos, each with every caption
  of ``MSRVTT_data.json`` (the training stream draws one per visit; UniVL's
  ``--expand_msrvtt_sentences`` visits each pair once per epoch instead); ``test`` = the JSFusion
  rows, one caption per video. No ``val`` split (the release selects on the test split).
- ``"caption"`` (MSRVTT-full): the videos of ``MSRVTT_data.json`` in file order, the first
  ``num_train`` (6513) ``train``, the next ``num_val`` (497) ``val``, the rest (2990) ``test``,
  as UniVL's caption loader splits them; every video carries all its captions (20), the
  references of captioning.

Features are stored whole (the decoder keeps the first ``max_frames`` rows). The feature pickle
is unpickled: use this on the release's files only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meltr.data.converters.release_files import (
    MissingItem,
    MissingItemsError,
    load_json,
    load_pickle,
    read_csv_rows,
)
from meltr.data.decoders import FeatureText
from meltr.data.writer import Sample, write_shards

ANNOTATIONS = "MSRVTT_data.json"
FEATURES_PICKLE = "msrvtt_videos_features.pickle"
TRAIN_CSVS = {"retrieval-9k": "MSRVTT_train.9k.csv", "retrieval-7k": "MSRVTT_train.7k.csv"}
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
LAYOUTS = (*TRAIN_CSVS, "caption")
FULL_SPLIT = {"num_train": 6513, "num_val": 497}


@dataclass(frozen=True)
class MsrvttFeatureVideo:
    """One video to write; ``features`` is the array of the feature pickle."""

    key: str
    split: str
    captions: tuple[str, ...]
    features: np.ndarray = field(repr=False, compare=False)


@dataclass
class MsrvttFeaturePlan:
    """What a conversion writes, by split, and the listed videos that cannot be written."""

    videos: dict[str, list[MsrvttFeatureVideo]] = field(default_factory=dict)
    missing: list[MissingItem] = field(default_factory=list)


def plan_msrvtt_features(
    root: str | os.PathLike,
    layout: str = "retrieval-9k",
    num_train: int = FULL_SPLIT["num_train"],
    num_val: int = FULL_SPLIT["num_val"],
) -> MsrvttFeaturePlan:
    """Read the release at ``root`` and list the videos of ``layout`` (module docstring).

    Raises ValueError for an unknown layout or malformed files (naming the file and entry),
    FileNotFoundError naming an absent file.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root)
    annotations = load_json(root / ANNOTATIONS, "videos and captions")
    captions = _captions(annotations, root / ANNOTATIONS)
    if layout == "caption":
        splits = _full_splits(annotations, root / ANNOTATIONS, num_train, num_val, captions)
    else:
        train_rows = read_csv_rows(root / TRAIN_CSVS[layout], ("video_id",), "training videos")
        test_rows = read_csv_rows(root / TEST_CSV, ("video_id", "sentence"), "test pairs")
        splits = {
            "train": [(row["video_id"], captions.get(row["video_id"], [])) for row in train_rows],
            "test": [(row["video_id"], [row["sentence"]]) for row in test_rows],
        }
    features = load_pickle(root / FEATURES_PICKLE, "S3D features per video")
    if not isinstance(features, dict):
        raise ValueError(f"{root / FEATURES_PICKLE}: expected a dict video_id -> array")
    plan = MsrvttFeaturePlan()
    for split, listed in splits.items():
        plan.videos[split] = []
        for video_id, video_captions in listed:
            array = features.get(video_id)
            if array is None:
                plan.missing.append(
                    MissingItem(video_id, split, f"no features in {FEATURES_PICKLE}")
                )
            elif len(array) == 0:
                plan.missing.append(MissingItem(video_id, split, "an empty feature array"))
            elif not video_captions or not all(c.strip() for c in video_captions):
                plan.missing.append(MissingItem(video_id, split, f"no caption in {ANNOTATIONS}"))
            else:
                video = MsrvttFeatureVideo(video_id, split, tuple(video_captions), array)
                plan.videos[split].append(video)
    return plan


def _captions(annotations: object, path: Path) -> dict[str, list[str]]:
    """``{video_id: [captions in file order]}`` of ``MSRVTT_data.json``."""
    sentences = annotations.get("sentences") if isinstance(annotations, dict) else None
    if not isinstance(sentences, list):
        raise ValueError(f"{path}: expected a top-level 'sentences' list")
    captions: dict[str, list[str]] = {}
    for position, entry in enumerate(sentences):
        if not isinstance(entry, dict) or not isinstance(entry.get("video_id"), str):
            raise ValueError(f"{path}: sentences[{position}] has no str 'video_id'")
        if not isinstance(entry.get("caption"), str):
            raise ValueError(f"{path}: sentences[{position}] has no str 'caption'")
        captions.setdefault(entry["video_id"], []).append(entry["caption"].strip())
    return captions


def _full_splits(
    annotations: dict, path: Path, num_train: int, num_val: int, captions: dict
) -> dict[str, list[tuple[str, list[str]]]]:
    videos = annotations.get("videos")
    if not isinstance(videos, list) or not all(
        isinstance(v, dict) and isinstance(v.get("video_id"), str) for v in videos
    ):
        raise ValueError(f"{path}: expected a top-level 'videos' list of {{'video_id': str}}")
    if len(videos) <= num_train + num_val:
        raise ValueError(
            f"{path}: {len(videos)} videos, but the caption layout needs more than "
            f"{num_train} train + {num_val} val (the rest is test)"
        )
    ids = [video["video_id"] for video in videos]
    bounds = {"train": (0, num_train), "val": (num_train, num_train + num_val)}
    bounds["test"] = (num_train + num_val, len(ids))
    return {
        split: [(video_id, captions.get(video_id, [])) for video_id in ids[start:end]]
        for split, (start, end) in bounds.items()
    }


def materialise_video(video: MsrvttFeatureVideo) -> Sample:
    """The shard sample of ``video``."""
    return {
        "__key__": video.key,
        "features.npy": np.ascontiguousarray(video.features, dtype=np.float32),
        "json": {"video_id": video.key, "captions": list(video.captions), "split": video.split},
    }


def convert_msrvtt_features(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str = "retrieval-9k",
    skip_missing: bool = False,
    samples_per_shard: int = 500,
    num_train: int = FULL_SPLIT["num_train"],
    num_val: int = FULL_SPLIT["num_val"],
) -> dict:
    """Write the shards of ``layout`` (``train``, ``test`` and, for ``"caption"``, ``val``).

    Resumable: complete shards in ``out_dir`` are kept. Returns ``{split: [shard paths],
    "skipped": [MissingItem]}``. Raises MissingItemsError (before writing anything) when listed
    videos lack features or captions and ``skip_missing`` is false.
    """
    plan = plan_msrvtt_features(root, layout, num_train, num_val)
    if plan.missing and not skip_missing:
        raise MissingItemsError("MSRVTT", plan.missing)
    result: dict = {"skipped": plan.missing}
    for split, videos in plan.videos.items():
        result[split] = write_shards(
            videos, materialise_video, out_dir, split, FeatureText, samples_per_shard
        )
    return result
