"""Convert Kinetics-400 (the csv annotations and the downloaded clips) into ``VideoLabel`` shards.

Layout of ``root`` (the csv files directly under it or under ``annotations/``)::

    train.csv, validate.csv [, test.csv]   columns label, youtube_id, time_start, time_end,
                                           split, is_cc (also named kinetics-400_<split>.csv,
                                           kinetics400_<split>.csv or <split>.csv with val)
    any folders of clips                   <youtube_id>_<start:06d>_<end:06d>.mp4 (or .webm,
                                           .mkv), or <youtube_id>.mp4

Splits: ``train.csv`` -> ``train``; ``validate.csv`` -> ``test`` (the split Kinetics results,
the paper's included, are reported on); ``test.csv``, when it is there with labels -> ``val``
(held out for model selection). Class indices are the sorted label names of ``train.csv``,
written to ``labels.txt``. Clips are copied as they are; with ``frames=N`` the N frames at the
Violet release's positions (frame ``int(total / (N + 1) * (i + 1))``) are padded to a square,
resized and stored as a small lossless mp4 instead, so that precomputed dVAE codes (``vq``: a pickle
``{clip name: int [N, g, g]}``) match the frames the model sees.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from meltr.data.converters.release_files import MissingItem, MissingItemsError, read_csv_rows
from meltr.data.converters.release_frames import (
    check_codes,
    encode_lossless_mp4,
    load_vq_pickle,
    square_frames,
)
from meltr.data.decoders import VideoLabel
from meltr.data.writer import Sample, write_shards

CSV_SPLITS = {"train": ("train",), "validate": ("validate", "val"), "test": ("test",)}
OUR_SPLIT = {"train": "train", "validate": "test", "test": "val"}
CSV_PREFIXES = ("", "kinetics-400_", "kinetics400_", "kinetics_")
CLIP_SUFFIXES = (".mp4", ".webm", ".mkv")
COLUMNS = ("label", "youtube_id", "time_start", "time_end")


@dataclass(frozen=True)
class Clip:
    key: str
    split: str
    path: Path
    label: int
    label_name: str
    codes: np.ndarray | None = None


@dataclass
class KineticsPlan:
    clips: dict[str, list[Clip]] = field(default_factory=dict)
    missing: list[MissingItem] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def find_csv(root: Path, split: str) -> Path | None:
    """The csv of a Kinetics ``split`` (a key of ``CSV_SPLITS``) under ``root``, if any."""
    for folder in (root, root / "annotations"):
        for name in CSV_SPLITS[split]:
            for prefix in CSV_PREFIXES:
                path = folder / f"{prefix}{name}.csv"
                if path.is_file():
                    return path
    return None


def clip_name(row: dict, path: Path, position: int) -> str:
    """``<youtube_id>_<start:06d>_<end:06d>``, the name the clips are usually saved under."""
    try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except ValueError as error:
        raise ValueError(f"{path}: row {position + 2} has a non-numeric time ({error})") from None
    return f"{row['youtube_id'].strip()}_{start:06d}_{end:06d}"


def index_clips(root: Path) -> dict[str, Path]:
    """Every clip file under ``root`` by its name without suffix (the first found wins)."""
    clips: dict[str, Path] = {}
    for directory, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = Path(directory) / name
            if path.suffix.lower() in CLIP_SUFFIXES:
                clips.setdefault(path.stem, path)
    return clips


def plan_kinetics(root: str | os.PathLike, vq: str | os.PathLike | None = None) -> KineticsPlan:
    """List the clips of every split (module docstring). FileNotFoundError when ``train.csv`` or
    ``validate.csv`` is absent; ValueError for a malformed row or a label not in training."""
    root = Path(root)
    paths = {split: find_csv(root, split) for split in CSV_SPLITS}
    for split in ("train", "validate"):
        if paths[split] is None:
            raise FileNotFoundError(f"{root}: no {split}.csv (looked for the names in CSV_SPLITS)")
    rows = {
        split: read_csv_rows(path, COLUMNS, f"Kinetics {split} annotations")
        for split, path in paths.items()
        if path is not None
    }
    if "test" in rows and any(not row["label"].strip() for row in rows["test"]):
        del rows["test"]  # the unlabelled test release: nothing to select on
    plan = KineticsPlan(labels=sorted({row["label"].strip() for row in rows["train"]}))
    index_of = {name: index for index, name in enumerate(plan.labels)}
    codes = load_vq_pickle(vq) if vq is not None else None
    clips = index_clips(root)
    for split, split_rows in rows.items():
        ours = OUR_SPLIT[split]
        plan.clips[ours] = []
        for position, row in enumerate(split_rows):
            name, label = clip_name(row, paths[split], position), row["label"].strip()
            if label not in index_of:
                raise ValueError(
                    f"{paths[split]}: row {position + 2} has label {label!r}, which train.csv "
                    "does not have"
                )
            path = clips.get(name) or clips.get(row["youtube_id"].strip())
            if path is None:
                plan.missing.append(MissingItem(name, ours, "no clip file"))
            elif codes is not None and name not in codes:
                plan.missing.append(MissingItem(name, ours, f"no codes in {Path(vq).name}"))
            else:
                clip_codes = None if codes is None else codes[name]
                plan.clips[ours].append(
                    Clip(name.replace(".", "_"), ours, path, index_of[label], label, clip_codes)
                )
    return plan


def sample_release_frames(video: bytes, num_frames: int) -> list[np.ndarray]:
    """The ``num_frames`` frames at the Violet release's positions, uint8 RGB ``[H, W, 3]``."""
    with av.open(io.BytesIO(video)) as container:
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not decoded:
        raise ValueError("the clip decodes to no frames")
    step = len(decoded) / (num_frames + 1)
    return [decoded[min(int(step * (i + 1)), len(decoded) - 1)] for i in range(num_frames)]


def materialise_clip(clip: Clip, frames: int | None, size: int) -> Sample:
    """The shard sample of ``clip``: its bytes, or its release frames as an mp4, and codes."""
    video = clip.path.read_bytes()
    if frames is not None:
        try:
            video = encode_lossless_mp4(square_frames(sample_release_frames(video, frames), size))
        except (av.error.FFmpegError, ValueError) as error:
            raise ValueError(f"clip {clip.path}: {error}") from error
    sample = {
        "__key__": clip.key,
        "mp4": video,
        "json": {
            "video_id": clip.key,
            "label": clip.label,
            "label_name": clip.label_name,
            "split": clip.split,
        },
    }
    if clip.codes is not None:
        sample["vq.npy"] = check_codes(clip.codes, frames, clip.key)
    return sample


def convert_kinetics(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    frames: int | None = None,
    size: int = 224,
    vq: str | os.PathLike | None = None,
    skip_missing: bool = False,
    samples_per_shard: int = 200,
    workers: int = 1,
) -> dict:
    """Write the Kinetics-400 shards of ``root`` into ``out_dir`` and ``labels.txt``.

    Returns ``{split: [shard paths], "skipped": [MissingItem], "labels": path}``. Raises
    MissingItemsError (before writing) for listed clips without a file (or codes) unless
    ``skip_missing``; ValueError when ``vq`` is given without ``frames``.
    """
    if vq is not None and frames is None:
        raise ValueError("dVAE codes (vq) describe fixed frames: give frames=N with them")
    plan = plan_kinetics(root, vq)
    if plan.missing and not skip_missing:
        raise MissingItemsError("Kinetics", plan.missing)
    materialise = functools.partial(materialise_clip, frames=frames, size=size)
    result: dict = {"skipped": plan.missing}
    for split, clips in plan.clips.items():
        result[split] = write_shards(
            clips, materialise, out_dir, split, VideoLabel, samples_per_shard, workers
        )
    labels = Path(out_dir) / "labels.txt"
    labels.write_text("\n".join(plan.labels) + "\n")
    result["labels"] = labels
    return result
