"""Convert UniVL's YouCook2 feature release into shards of the feature + text kind.

Expected layout of ``root`` (``youcookii.zip`` of the UniVL release)::

    youcookii_train.csv, youcookii_val.csv   columns video_id,feature_file
    youcookii_data.pickle                    {video_id: {"start", "end", "text", "transcript"}}
      or youcookii_data.no_transcript.pickle   (the public file: every transcript is 'NONE')
    youcookii_videos_features.pickle         {feature_file: float [T_seconds, 1024]} (S3D, 1/s)

Every caption of a video is one clip, a sample keyed ``<video_id>_<index>`` with that caption,
the features ``feat[int(start) : int(end) + 1]`` (the release's slice, all rows kept; the decoder
keeps the first ``max_frames``) and, when the data pickle has a real one (not ``'NONE'`` or
empty), its transcript. The sample's ``video_id`` is the clip key: in retrieval and captioning
every clip is an item of its own. The training csv's clips become ``train``, the validation
csv's ``test`` (UniVL and MELTR report YouCook2 on the validation split; the test annotations
are not public), so there is no ``val`` split and model selection falls back to ``test``.

The pickles are unpickled: use this on the release's files only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meltr.data.converters.release_files import (
    MissingItem,
    MissingItemsError,
    load_pickle,
    read_csv_rows,
)
from meltr.data.decoders import FeatureText
from meltr.data.writer import Sample, write_shards

SPLIT_CSVS = {"train": "youcookii_train.csv", "test": "youcookii_val.csv"}
DATA_PICKLES = ("youcookii_data.pickle", "youcookii_data.no_transcript.pickle")
FEATURES_PICKLE = "youcookii_videos_features.pickle"
NO_TRANSCRIPT = "NONE"


@dataclass(frozen=True)
class YouCook2Clip:
    """One clip to write; ``features`` is a view into the feature pickle."""

    key: str
    split: str
    youtube_id: str
    start: float
    end: float
    caption: str
    transcript: str | None
    features: np.ndarray = field(repr=False, compare=False)


@dataclass
class YouCook2Plan:
    """What a conversion writes, by split, and the listed clips that cannot be written."""

    clips: dict[str, list[YouCook2Clip]] = field(default_factory=dict)
    missing: list[MissingItem] = field(default_factory=list)
    data_pickle: str = ""


def plan_youcook2(root: str | os.PathLike, data_pickle: str | None = None) -> YouCook2Plan:
    """Read the release at ``root`` and list its clips. ``data_pickle``: the data file's name
    (default: ``youcookii_data.pickle`` if present, else the no-transcript one).

    Raises FileNotFoundError naming an absent file, ValueError for malformed entries (naming the
    file and the entry).
    """
    root = Path(root)
    if data_pickle is None:
        present = [name for name in DATA_PICKLES if (root / name).is_file()]
        data_pickle = present[0] if present else DATA_PICKLES[0]
    data = load_pickle(root / data_pickle, "captions and clip boundaries per video")
    if not isinstance(data, dict):
        raise ValueError(f"{root / data_pickle}: expected a dict video_id -> clips")
    rows = {
        split: read_csv_rows(root / name, ("video_id", "feature_file"), f"{split} videos")
        for split, name in SPLIT_CSVS.items()
    }
    features = load_pickle(root / FEATURES_PICKLE, "S3D features per video")
    if not isinstance(features, dict):
        raise ValueError(f"{root / FEATURES_PICKLE}: expected a dict feature_file -> array")
    plan = YouCook2Plan(data_pickle=data_pickle)
    for split, split_rows in rows.items():
        plan.clips[split] = []
        for row in split_rows:
            _add_video(plan, split, row, data, features, root / data_pickle)
    return plan


def _add_video(
    plan: YouCook2Plan, split: str, row: dict, data: dict, features: dict, data_path: Path
) -> None:
    """Add the clips of one csv row to ``plan`` (or note why they cannot be written)."""
    video_id, feature_file = row["video_id"], row["feature_file"]
    if video_id not in data:
        plan.missing.append(MissingItem(video_id, split, f"no entry in {data_path.name}"))
        return
    entry = data[video_id]
    fields = ("start", "end", "text")
    if not isinstance(entry, dict) or any(name not in entry for name in fields):
        raise ValueError(f"{data_path}: entry {video_id!r} lacks one of {fields}")
    starts, ends, texts = (list(entry[name]) for name in fields)
    transcripts = list(entry["transcript"]) if "transcript" in entry else [None] * len(texts)
    if not len(starts) == len(ends) == len(texts) == len(transcripts):
        raise ValueError(f"{data_path}: entry {video_id!r} has lists of different lengths")
    video_features = features.get(feature_file)
    for index, (start, end, text, transcript) in enumerate(
        zip(starts, ends, texts, transcripts, strict=True)
    ):
        key = f"{video_id}_{index}"
        if video_features is None:
            plan.missing.append(MissingItem(key, split, f"no features {feature_file!r}"))
            continue
        rows = np.asarray(video_features)[int(start) : int(end) + 1]
        if len(rows) == 0:
            reason = f"no feature rows in [{start}, {end}] of {len(video_features)}"
            plan.missing.append(MissingItem(key, split, reason))
        elif not isinstance(text, str) or not text.strip():
            plan.missing.append(MissingItem(key, split, "empty caption"))
        else:
            spoken = transcript.strip() if isinstance(transcript, str) else ""
            plan.clips[split].append(
                YouCook2Clip(
                    key=key,
                    split=split,
                    youtube_id=video_id,
                    start=float(start),
                    end=float(end),
                    caption=text.strip(),
                    transcript=spoken if spoken and spoken != NO_TRANSCRIPT else None,
                    features=rows,
                )
            )


def materialise_clip(clip: YouCook2Clip) -> Sample:
    """The shard sample of ``clip``."""
    record = {
        "video_id": clip.key,
        "captions": [clip.caption],
        "youtube_id": clip.youtube_id,
        "start": clip.start,
        "end": clip.end,
        "split": clip.split,
    }
    if clip.transcript is not None:
        record["transcript"] = clip.transcript
    return {
        "__key__": clip.key,
        "features.npy": np.ascontiguousarray(clip.features, dtype=np.float32),
        "json": record,
    }


def convert_youcook2(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    data_pickle: str | None = None,
    skip_missing: bool = False,
    samples_per_shard: int = 1000,
) -> dict:
    """Write ``train-*.tar`` and ``test-*.tar`` of the release at ``root`` (module docstring).

    Resumable: complete shards in ``out_dir`` are kept. Returns ``{"train", "test": [shard
    paths], "skipped": [MissingItem], "data_pickle": name, "with_transcript": clips that have
    one}``. Raises MissingItemsError (before writing anything) when listed clips lack features,
    an entry or a caption and ``skip_missing`` is false.
    """
    plan = plan_youcook2(root, data_pickle)
    if plan.missing and not skip_missing:
        raise MissingItemsError("YouCook2", plan.missing)
    result: dict = {"skipped": plan.missing, "data_pickle": plan.data_pickle}
    for split, clips in plan.clips.items():
        result[split] = write_shards(
            clips, materialise_clip, out_dir, split, FeatureText, samples_per_shard
        )
    result["with_transcript"] = sum(
        clip.transcript is not None for clips in plan.clips.values() for clip in clips
    )
    return result
