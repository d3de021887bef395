"""Convert the official MSRVTT release into WebDataset shards (see docs/ARCHITECTURE.md).

Expected layout of ``root``::

    videos/video0.mp4 ... videos/video9999.mp4
    MSR_VTT.json                      {"annotations": [{"image_id": "video0", "caption": ...}, ...]}
    train_list_9k.txt | train_list_7k.txt   one video id per line
    val_list_jsfusion.txt             the 1000 JSFusion test videos
    jsfusion_val_caption_idx.pkl      optional: {video id: index of its test caption}
    MSRVTT_JSFUSION_test.csv          optional (UniVL): columns key,vid_key,video_id,sentence

Train samples carry every caption of the video, in ``MSR_VTT.json`` order. The test videos and their
caption come from, in order of precedence:

1. ``MSRVTT_JSFUSION_test.csv`` when present: its rows, in order, give the videos and captions;
2. else ``val_list_jsfusion.txt`` with, per video, the caption that
   ``jsfusion_val_caption_idx.pkl`` selects (an index into the video's ``MSR_VTT.json`` captions);
3. else ``val_list_jsfusion.txt`` with each video's first caption.

With ``val_videos = N > 0`` the last N videos of the training list form a ``val`` split
instead (each with its first caption, one caption per video as the test split has), so that
checkpoint selection and hyperparameter sweeps never look at the test split; the default keeps
every listed video for training, as the release does.

The mp4 bytes are copied unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from meltr.data.converters.release_files import (
    MissingItem,
    MissingItemsError,
    load_pickle,
    read_csv_rows,
    read_lines,
)
from meltr.data.decoders import VideoCaptions
from meltr.data.video import VideoDecodeError, check_video_file
from meltr.data.writer import Sample, write_shards

TRAIN_LISTS = {"9k": "train_list_9k.txt", "7k": "train_list_7k.txt"}
TEST_LIST = "val_list_jsfusion.txt"
TEST_CAPTION_INDEX = "jsfusion_val_caption_idx.pkl"
UNIVL_TEST_CSV = "MSRVTT_JSFUSION_test.csv"
ANNOTATIONS = "MSR_VTT.json"


@dataclass(frozen=True)
class MsrvttVideo:
    """One video to write: ``key`` is its id (``"video7010"``), ``path`` its mp4."""

    key: str
    path: Path
    captions: tuple[str, ...]
    split: str


@dataclass
class MsrvttPlan:
    """What a conversion writes: videos per split, and the listed videos that cannot be written."""

    train: list[MsrvttVideo] = field(default_factory=list)
    val: list[MsrvttVideo] = field(default_factory=list)
    test: list[MsrvttVideo] = field(default_factory=list)
    missing: list[MissingItem] = field(default_factory=list)
    test_caption_source: str = ""


def plan_msrvtt(root: str | os.PathLike, split: str = "9k", val_videos: int = 0) -> MsrvttPlan:
    """Read the release's metadata and list the videos of ``split`` (``"9k"`` or ``"7k"``), the
    last ``val_videos`` of its training list held out as ``val`` (module docstring); a listed
    video without an mp4, without a caption or whose mp4 does not decode is missing.

    Raises:
        ValueError: unknown split, ``val_videos`` not in [0, training videos), or malformed
            metadata (naming the file and the entry).
        FileNotFoundError: a required metadata file is absent (naming it).
    """
    if split not in TRAIN_LISTS:
        raise ValueError(f"split must be one of {sorted(TRAIN_LISTS)}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a directory (the MSRVTT release)")
    captions = load_captions(root / ANNOTATIONS)
    plan = MsrvttPlan()
    train_ids = read_id_list(root / TRAIN_LISTS[split])
    if not 0 <= val_videos < len(train_ids):
        raise ValueError(
            f"val_videos must be in [0, {len(train_ids)}) (the {split} training list's videos), "
            f"got {val_videos}"
        )
    held_out = len(train_ids) - val_videos
    listed = [(v, captions.get(v, []), "train") for v in train_ids[:held_out]]
    listed += [(v, captions.get(v, [])[:1], "val") for v in train_ids[held_out:]]
    test_captions, plan.test_caption_source = _test_captions(root, captions)
    listed += [(video_id, chosen, "test") for video_id, chosen in test_captions.items()]
    for video_id, chosen, video_split in tqdm(listed, desc="checking videos", unit="video"):
        _add(plan, root, video_id, chosen, video_split)
    return plan


def convert_msrvtt(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    split: str = "9k",
    skip_missing: bool = False,
    samples_per_shard: int = 200,
    val_videos: int = 0,
) -> dict:
    """Write ``train-*.tar``, ``test-*.tar`` and (``val_videos > 0``) ``val-*.tar`` shards of the
    MSRVTT release at ``root``.

    Resumable: complete shards already in ``out_dir`` are kept (see ``write_shards``).

    Returns:
        ``{"train": [shard paths], "val": [shard paths], "test": [shard paths], "skipped":
        [MissingItem],
        "test_caption_source": file the test captions came from}``.

    Raises:
        MissingItemsError: some listed videos have no mp4 or no caption and ``skip_missing`` is
            false; raised before anything is written.
    """
    plan = plan_msrvtt(root, split, val_videos)
    if plan.missing and not skip_missing:
        raise MissingItemsError("MSRVTT", plan.missing)

    def write(split: str, videos: list[MsrvttVideo]) -> list:
        return write_shards(
            videos, materialise_video, out_dir, split, VideoCaptions, samples_per_shard
        )

    return {
        "train": write("train", plan.train),
        "val": write("val", plan.val),
        "test": write("test", plan.test),
        "skipped": plan.missing,
        "test_caption_source": plan.test_caption_source,
    }


def materialise_video(video: MsrvttVideo) -> Sample:
    """The shard sample of ``video``: its mp4 bytes as they are on disk, and its captions."""
    return {
        "__key__": video.key,
        "mp4": video.path.read_bytes(),
        "json": {"video_id": video.key, "captions": list(video.captions), "split": video.split},
    }


def load_captions(path: Path) -> dict[str, list[str]]:
    """``{video id: [captions in file order]}`` from ``MSR_VTT.json``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (the MSRVTT annotations file)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: expected a top-level 'annotations' list")
    captions: dict[str, list[str]] = {}
    for position, entry in enumerate(annotations):
        if not isinstance(entry, dict) or not isinstance(entry.get("image_id"), str):
            raise ValueError(f"{path}: annotations[{position}] has no str 'image_id'")
        if not isinstance(entry.get("caption"), str):
            raise ValueError(f"{path}: annotations[{position}] has no str 'caption'")
        captions.setdefault(entry["image_id"], []).append(entry["caption"].strip())
    return captions


def read_id_list(path: Path) -> list[str]:
    """Video ids, one per non-empty line."""
    return read_lines(path, "an MSRVTT split list")


def _add(plan: MsrvttPlan, root: Path, video_id: str, captions: list[str], split: str) -> None:
    """List ``video_id`` in ``split``, or as missing: no mp4, no caption, or an mp4 that does not
    decode (``check_video_file``)."""
    path = root / "videos" / f"{video_id}.mp4"
    if not path.is_file():
        plan.missing.append(MissingItem(video_id, split, f"no file {path}"))
        return
    if not captions:
        plan.missing.append(MissingItem(video_id, split, f"no caption in {ANNOTATIONS}"))
        return
    try:
        check_video_file(path)
    except VideoDecodeError as error:
        plan.missing.append(MissingItem(video_id, split, f"{path} does not decode: {error}"))
        return
    getattr(plan, split).append(MsrvttVideo(video_id, path, tuple(captions), split))


def _test_captions(root: Path, captions: dict[str, list[str]]) -> tuple[dict[str, list[str]], str]:
    """``{test video id: [its test caption(s)]}`` by the precedence in the module docstring."""
    if (root / UNIVL_TEST_CSV).is_file():
        return _read_univl_csv(root / UNIVL_TEST_CSV), UNIVL_TEST_CSV
    video_ids = read_id_list(root / TEST_LIST)
    index_path = root / TEST_CAPTION_INDEX
    if not index_path.is_file():
        return {v: captions.get(v, [])[:1] for v in video_ids}, f"{TEST_LIST} (first captions)"
    chosen_index = load_pickle(index_path, "the index of each test video's caption")
    if not isinstance(chosen_index, dict):
        raise ValueError(f"{index_path}: expected a dict video id -> caption index")
    chosen = {}
    for video_id in video_ids:
        video_captions = captions.get(video_id, [])
        if not video_captions:
            chosen[video_id] = []  # reported as missing by the caller
            continue
        if video_id not in chosen_index:
            raise ValueError(f"{index_path}: no caption index for {video_id}")
        index = chosen_index[video_id]
        if not 0 <= int(index) < len(video_captions):
            raise ValueError(
                f"{index_path}: caption index {index} for {video_id} is outside its "
                f"{len(video_captions)} captions"
            )
        chosen[video_id] = [video_captions[int(index)]]
    return chosen, TEST_CAPTION_INDEX


def _read_univl_csv(path: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = {}
    for row in read_csv_rows(path, ("video_id", "sentence"), "UniVL's test pairs"):
        captions.setdefault(row["video_id"], []).append(row["sentence"])
    return captions
