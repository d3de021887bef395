"""Convert the video-QA annotations in ALPRO's layout (MSVD-QA, MSRVTT-QA) into ``VideoQA`` shards.

Expected layout of ``root`` (the release's ``data/msvd_qa/``; the annotation files may also lie
directly in ``root``)::

    txt/train.jsonl, txt/val.jsonl, txt/test.jsonl
        one JSON object a line: {"question": str, "answer": str, "video_id": str,
        "answer_type": str}
    txt/train_ans2label.json        {answer: label}: the answer vocabulary (2423 for MSVD-QA)
    videos/<video_id>.avi           (or .mp4: the first of ``video_suffixes`` that exists)

Every split whose file exists is written (``train.jsonl`` is required), one sample per question,
keyed ``<split><position>``: the record ``{video_id, question, answer, answer_index,
answer_type}``, with ``answer_index`` the answer's label (-1 when the answer is not in the
vocabulary, as for many val / test answers, which then count as wrong), and the video file's
bytes as they are on disk (the ``mp4`` member; FFmpeg reads the container from the bytes, AVI
included). Each question's sample holds its own copy of the video: the shards take about the
video folder's size times the questions per video (about 26 for MSVD-QA). ``answers.txt`` lists
the vocabulary, line ``i`` the answer of label ``i``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meltr.data.converters.release_files import (
    MissingItem,
    MissingItemsError,
    load_json,
    require_file,
)
from meltr.data.decoders import VideoQA
from meltr.data.writer import Sample, write_shards

SPLITS = ("train", "val", "test")
ANSWER_VOCABULARY = "train_ans2label.json"
VIDEO_SUFFIXES = (".avi", ".mp4")
NO_ANSWER = -1
FIELDS = ("question", "answer", "video_id")


@dataclass(frozen=True)
class QuestionSample:
    """One question to write: its shard key, split, record and video file."""

    key: str
    split: str
    record: dict
    video: Path


@dataclass
class AlproQAPlan:
    """What a conversion writes: questions per split, the answer vocabulary, the questions whose
    video is missing."""

    questions: dict[str, list[QuestionSample]] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)
    missing: list[MissingItem] = field(default_factory=list)


def annotation_dir(root: Path) -> Path:
    """``root / "txt"`` when it holds ``train.jsonl``, else ``root``."""
    return root / "txt" if (root / "txt" / "train.jsonl").is_file() else root


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSON-lines file, each checked for the string fields the release reads;
    ValueError naming the file and line otherwise."""
    require_file(path, "ALPRO's QA annotations, one JSON object a line")
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number} is not valid JSON: {error}") from None
        absent = [
            name
            for name in FIELDS
            if not isinstance(entry, dict) or not isinstance(entry.get(name), str)
        ]
        if absent:
            raise ValueError(f"{path}:{number} has no string field(s) {absent}")
        entries.append(entry)
    return entries


def read_answer_vocabulary(path: Path) -> list[str]:
    """The answers of ``{answer: label}`` in label order; ValueError unless the labels are
    exactly 0 .. N - 1."""
    mapping = load_json(path, "ALPRO's answer vocabulary {answer: label}")
    if not isinstance(mapping, dict) or not all(
        isinstance(label, int) and not isinstance(label, bool) for label in mapping.values()
    ):
        raise ValueError(f"{path}: expected an object answer -> integer label")
    if sorted(mapping.values()) != list(range(len(mapping))):
        raise ValueError(f"{path}: the labels are not 0 .. {len(mapping) - 1}, each once")
    return sorted(mapping, key=mapping.__getitem__)


def plan_alpro_qa(
    root: str | os.PathLike, video_suffixes: Sequence[str] = VIDEO_SUFFIXES
) -> AlproQAPlan:
    """Read the annotations under ``root`` and find every question's video."""
    root = Path(root)
    annotations = annotation_dir(root)
    plan = AlproQAPlan(answers=read_answer_vocabulary(annotations / ANSWER_VOCABULARY))
    label = {answer: index for index, answer in enumerate(plan.answers)}
    for split in SPLITS:
        path = annotations / f"{split}.jsonl"
        if split != "train" and not path.is_file():
            continue
        plan.questions[split] = []
        for position, entry in enumerate(read_jsonl(path)):
            key = f"{split}{position:07d}"
            video = _video_file(root / "videos", entry["video_id"], video_suffixes)
            if video is None:
                reason = f"no video {entry['video_id']}{{{','.join(video_suffixes)}}} in videos/"
                plan.missing.append(MissingItem(key, split, reason))
                continue
            record = {
                "video_id": entry["video_id"],
                "question": entry["question"].strip(),
                "answer": entry["answer"],
                "answer_index": label.get(entry["answer"], NO_ANSWER),
                "answer_type": entry.get("answer_type", ""),
            }
            plan.questions[split].append(QuestionSample(key, split, record, video))
    return plan


def _video_file(directory: Path, video_id: str, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        path = directory / f"{video_id}{suffix}"
        if path.is_file():
            return path
    return None


def materialise_question(question: QuestionSample) -> Sample:
    """The shard sample of ``question``: its record and its video's bytes."""
    return {
        "__key__": question.key,
        "mp4": question.video.read_bytes(),
        "json": question.record | {"split": question.split},
    }


def convert_alpro_qa(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    skip_missing: bool = False,
    samples_per_shard: int = 500,
    workers: int = 1,
    video_suffixes: Sequence[str] = VIDEO_SUFFIXES,
) -> dict:
    """Write the shards of every annotated split and ``answers.txt`` into ``out_dir``.

    Resumable: complete shards already in ``out_dir`` are kept. Returns ``{split: [shard
    paths], "skipped": [MissingItem], "answers": path, "num_answers": int, "out_of_vocabulary":
    {split: count}}``. Raises MissingItemsError (before anything is written) when questions
    lack their video and ``skip_missing`` is false; FileNotFoundError / ValueError naming an
    absent or malformed annotation file.
    """
    plan = plan_alpro_qa(root, video_suffixes)
    if plan.missing and not skip_missing:
        raise MissingItemsError("ALPRO QA", plan.missing)
    result: dict = {"skipped": plan.missing, "num_answers": len(plan.answers)}
    result["out_of_vocabulary"] = {
        split: sum(q.record["answer_index"] == NO_ANSWER for q in questions)
        for split, questions in plan.questions.items()
    }
    for split, questions in plan.questions.items():
        result[split] = write_shards(
            questions, materialise_question, out_dir, split, VideoQA, samples_per_shard, workers
        )
    answers = Path(out_dir) / "answers.txt"
    answers.write_text("\n".join(plan.answers) + "\n")
    result["answers"] = answers
    return result
