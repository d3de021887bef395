"""Convert the Violet release's datasets (the files MELTR's violet/ reads) into WebDataset shards.

Layout of ``root`` for each task (``ds`` = ``msrvtt``, ``tgif`` or ``msvd``)::

    img_<ds>.pkl          {video: [base64 JPEG, ...]}   the stored frames (5 per video)
    <ds>_vq.pkl           {video: int16 [5, 7, 7]}      their dVAE codes (skip with vq=False)
    msrvtt-9k / -7k:      train_9k.json | train_7k.json, test.json
                          {"sentences": [{video_id, caption}, ...]}
    tgif-action / -transition:  txt_tgif-action.json | txt_tgif-transition.json
                          {split: [{video, question, option_0..option_4, answer: int}]}
                          or TGIF-QA's own Train_action_question.csv, Test_... (tab-separated:
                          gif_name, question, a1..a5, answer, vid_id, key)
    tgif-frame:           txt_tgif-frame.json  {split: [{video, question, answer: int}],
                          vocab: [1540 str]}
                          or Train_frameqa_question.csv, Test_... (gif_name, question, answer:
                          str, type, vid_id, key, description)
    msvd-qa:              txt_msvd-qa.json  {train, val, test: [...], vocab: [1000 str]}

Every split the annotations have (``train``, ``val``, ``test``) is written. Retrieval samples are
``VideoCaptions`` (one per video, its captions in file order); QA samples ``VideoQA`` (one per
question, the video's frames repeated in each). Frames become an mp4 (``release_frames``), codes
the ``vq.npy`` member. Open-ended answers: an ``int`` answer indexes ``vocab`` (-1: outside it, the
answer word unknown, ``answer`` ""); a TGIF-QA tsv answer word is looked up in the answer
vocabulary, which is the ``num_answers`` most frequent training answers (ties alphabetically;
1540 for TGIF-Frame, as the Violet release's) and is written to ``answers.txt``.
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from meltr.data.converters.release_files import MissingItem, MissingItemsError, read_csv_rows
from meltr.data.converters.release_frames import (
    check_codes,
    frames_to_mp4,
    load_frame_pickle,
    load_vq_pickle,
)
from meltr.data.decoders import VideoCaptions, VideoQA
from meltr.data.writer import Sample, write_shards

SPLITS = ("train", "val", "test")
NO_ANSWER = -1


@dataclass(frozen=True)
class Task:
    """Where a task's files are: ``dataset`` names the pickles, ``annotation`` the release json,
    ``qtype`` the TGIF-QA tsv files (None: no tsv alternative)."""

    kind: str  # "retrieval" | "multiple_choice" | "open_ended"
    dataset: str
    annotation: str | tuple[str, str]
    qtype: str | None = None
    num_answers: int = 0


TASKS = {
    "msrvtt-9k": Task("retrieval", "msrvtt", ("train_9k.json", "test.json")),
    "msrvtt-7k": Task("retrieval", "msrvtt", ("train_7k.json", "test.json")),
    "tgif-action": Task("multiple_choice", "tgif", "txt_tgif-action.json", "action"),
    "tgif-transition": Task("multiple_choice", "tgif", "txt_tgif-transition.json", "transition"),
    "tgif-frame": Task("open_ended", "tgif", "txt_tgif-frame.json", "frameqa", 1540),
    "msvd-qa": Task("open_ended", "msvd", "txt_msvd-qa.json", None, 1000),
}


@dataclass(frozen=True)
class Entry:
    """One sample to write: ``record`` holds the json fields of its kind (without ``split``)."""

    key: str
    split: str
    video: str
    record: dict
    frames: tuple = ()
    codes: np.ndarray | None = None


@dataclass
class Plan:
    """What a conversion writes: entries per split, the items left out, the answer vocabulary."""

    entries: dict[str, list[Entry]] = field(default_factory=dict)
    missing: list[MissingItem] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    annotation_source: str = ""


# ------------------------------------------------------------------ annotations


def read_json(path: Path) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    with open(path) as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error


def _entry_field(path: Path, split: str, position: int, entry: dict, name: str, kind: type):
    value = entry.get(name) if isinstance(entry, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(
            f"{path}: {split}[{position}] has no {kind.__name__} {name!r} (got {value!r})"
        )
    return value


def read_sentences(path: Path) -> dict[str, list[str]]:
    """``{video_id: [captions in file order]}`` from ``{"sentences": [{video_id, caption}]}``."""
    data = read_json(path)
    sentences = data.get("sentences") if isinstance(data, dict) else None
    if not isinstance(sentences, list):
        raise ValueError(f"{path}: expected a top-level 'sentences' list")
    captions: dict[str, list[str]] = {}
    for position, entry in enumerate(sentences):
        video = _entry_field(path, "sentences", position, entry, "video_id", str)
        caption = _entry_field(path, "sentences", position, entry, "caption", str)
        captions.setdefault(video, []).append(caption.strip())
    return captions


def option_count(entry: dict) -> int:
    """How many ``option_<i>`` fields an entry has (consecutive from 0)."""
    count = 0
    while f"option_{count}" in entry:
        count += 1
    return count


def read_release_qa(path: Path, kind: str) -> tuple[dict[str, list[dict]], list[str]]:
    """Per split, the QA records ``{video_id, question, answer, answer_index[, options]}`` of a
    Violet ``txt_<task>.json``, and the answer vocabulary (open-ended; ``[]`` otherwise)."""
    data = read_json(path)
    if not isinstance(data, dict) or not any(split in data for split in SPLITS):
        raise ValueError(f"{path}: expected an object with 'train' / 'val' / 'test' lists")
    vocab: list[str] = []
    if kind == "open_ended":
        vocab = data.get("vocab")
        if not isinstance(vocab, list) or not all(isinstance(word, str) for word in vocab):
            raise ValueError(f"{path}: an open-ended annotation needs a 'vocab' list of strings")
    index_of = {word: index for index, word in enumerate(vocab)}
    records = {}
    for split in SPLITS:
        if split not in data:
            continue
        if not isinstance(data[split], list):
            raise ValueError(f"{path}: {split!r} is not a list")
        records[split] = []
        for position, entry in enumerate(data[split]):
            video = _entry_field(path, split, position, entry, "video", str)
            question = _entry_field(path, split, position, entry, "question", str)
            answer = entry.get("answer")
            record = {"video_id": video, "question": question.strip()}
            if kind == "multiple_choice":
                options = [
                    _entry_field(path, split, position, entry, f"option_{i}", str).strip()
                    for i in range(option_count(entry))
                ]
                if not isinstance(answer, int) or not 0 <= answer < len(options):
                    raise ValueError(
                        f"{path}: {split}[{position}] answer {answer!r} is not an index into "
                        f"its {len(options)} options"
                    )
                record |= {"options": options, "answer_index": answer, "answer": options[answer]}
            else:
                record |= _open_ended_answer(answer, vocab, index_of, path, split, position)
            records[split].append(record)
    return records, vocab


def _open_ended_answer(answer, vocab, index_of, path, split, position) -> dict:
    if isinstance(answer, str):
        return {"answer": answer, "answer_index": index_of.get(answer, NO_ANSWER)}
    if isinstance(answer, int) and not isinstance(answer, bool) and -1 <= answer < len(vocab):
        return {"answer": vocab[answer] if answer >= 0 else "", "answer_index": answer}
    raise ValueError(
        f"{path}: {split}[{position}] answer {answer!r} is neither an index into the "
        f"{len(vocab)} answers (or -1) nor an answer string"
    )


TSV_SPLITS = {"train": "Train", "test": "Test"}


def tsv_path(root: Path, split: str, qtype: str) -> Path | None:
    """TGIF-QA's question file of ``split`` (``Train_<qtype>_question.csv`` or ``.tsv``)."""
    for suffix in ("csv", "tsv"):
        path = root / f"{TSV_SPLITS[split]}_{qtype}_question.{suffix}"
        if path.is_file():
            return path
    return None


def answer_vocabulary(answers: list[str], size: int) -> list[str]:
    """The ``size`` most frequent ``answers``, most frequent first, ties alphabetical."""
    counts = Counter(answers)
    return sorted(counts, key=lambda word: (-counts[word], word))[:size]


def read_tgif_tsv(root: Path, task: Task) -> tuple[dict[str, list[dict]], list[str], str]:
    """Per split, the records of TGIF-QA's own question files; the answer vocabulary
    (open-ended); the files read."""
    paths = {split: tsv_path(root, split, task.qtype) for split in TSV_SPLITS}
    if paths["train"] is None or paths["test"] is None:
        raise FileNotFoundError(
            f"{root}: neither {task.annotation} nor TGIF-QA's Train_/Test_{task.qtype}_question"
            ".csv files are there"
        )
    choices = tuple(f"a{i}" for i in range(1, 6))
    columns = ("gif_name", "question", "answer")
    rows = {
        split: read_csv_rows(
            path,
            columns + (choices if task.kind != "open_ended" else ()),
            "TGIF-QA questions",
            delimiter="\t",
        )
        for split, path in paths.items()
    }
    vocab: list[str] = []
    if task.kind == "open_ended":
        vocab = answer_vocabulary(
            [row["answer"].strip() for row in rows["train"]], task.num_answers
        )
    index_of = {word: index for index, word in enumerate(vocab)}
    records = {}
    for split, split_rows in rows.items():
        records[split] = []
        for position, row in enumerate(split_rows):
            record = {"video_id": row["gif_name"].strip(), "question": row["question"].strip()}
            answer = row["answer"].strip()
            if task.kind == "open_ended":
                record |= {"answer": answer, "answer_index": index_of.get(answer, NO_ANSWER)}
            else:
                options = [row[name].strip() for name in choices]
                if not answer.isdigit() or not 0 <= int(answer) < len(options):
                    raise ValueError(
                        f"{paths[split]}: row {position + 2} answer {answer!r} is not an index "
                        "into a1..a5"
                    )
                record |= {"options": options, "answer_index": int(answer)}
                record["answer"] = options[int(answer)]
            records[split].append(record)
    return records, vocab, " + ".join(path.name for path in paths.values())


# ------------------------------------------------------------------ planning and writing


def plan_violet(
    root: str | os.PathLike, task: str, vq: bool = True, annotation: str = "auto"
) -> Plan:
    """Read the annotations and pickles of ``task`` (a key of ``TASKS``) under ``root``.

    ``annotation``: ``"json"`` (the release's files), ``"tsv"`` (TGIF-QA's own) or ``"auto"``
    (the json when present). ``vq=False`` writes no codes. Raises FileNotFoundError naming an
    absent file, ValueError naming a malformed entry.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if annotation not in ("auto", "json", "tsv"):
        raise ValueError(f"annotation must be 'auto', 'json' or 'tsv', got {annotation!r}")
    spec, root = TASKS[task], Path(root)
    plan = Plan()
    records = _records(root, spec, annotation, plan)
    frames = load_frame_pickle(root / f"img_{spec.dataset}.pkl")
    codes = load_vq_pickle(root / f"{spec.dataset}_vq.pkl") if vq else None
    for split, split_records in records.items():
        plan.entries[split] = []
        for position, record in enumerate(split_records):
            key = f"{split}{position:07d}" if spec.kind != "retrieval" else record["video_id"]
            _add(plan, Entry(key, split, record["video_id"], record), frames, codes, spec)
    return plan


def _records(root: Path, spec: Task, annotation: str, plan: Plan) -> dict[str, list[dict]]:
    if spec.kind == "retrieval":
        train_file, test_file = spec.annotation
        plan.annotation_source = f"{train_file} + {test_file}"
        return {
            split: [
                {"video_id": video, "captions": captions}
                for video, captions in read_sentences(root / name).items()
            ]
            for split, name in (("train", train_file), ("test", test_file))
        }
    use_json = annotation == "json" or (
        annotation == "auto" and ((root / spec.annotation).is_file() or spec.qtype is None)
    )
    if use_json:
        records, plan.answers = read_release_qa(root / spec.annotation, spec.kind)
        plan.annotation_source = spec.annotation
        return records
    if spec.qtype is None:
        raise ValueError(f"{spec.dataset} has no TGIF-QA tsv files; use its {spec.annotation}")
    records, plan.answers, plan.annotation_source = read_tgif_tsv(root, spec)
    return records


def _add(plan: Plan, entry: Entry, frames: dict, codes: dict | None, spec: Task) -> None:
    what = f"{entry.key} (video {entry.video})" if spec.kind != "retrieval" else entry.video
    if entry.video not in frames:
        plan.missing.append(MissingItem(what, entry.split, f"no frames in img_{spec.dataset}.pkl"))
        return
    video_codes = None
    if codes is not None:
        if entry.video not in codes:
            reason = f"no codes in {spec.dataset}_vq.pkl"
            plan.missing.append(MissingItem(what, entry.split, reason))
            return
        video_codes = check_codes(codes[entry.video], len(frames[entry.video]), entry.video)
    frames_of_video = tuple(frames[entry.video])
    plan.entries[entry.split].append(replace(entry, frames=frames_of_video, codes=video_codes))


def materialise_entry(entry: Entry, size: int) -> Sample:
    """The shard sample of ``entry``: its frames as an mp4, its record, its codes."""
    sample = {
        "__key__": entry.key,
        "mp4": frames_to_mp4(entry.frames, size),
        "json": entry.record | {"split": entry.split},
    }
    if entry.codes is not None:
        sample["vq.npy"] = entry.codes
    return sample


def convert_violet(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    task: str,
    size: int = 224,
    vq: bool = True,
    annotation: str = "auto",
    skip_missing: bool = False,
    samples_per_shard: int = 500,
    workers: int = 1,
) -> dict:
    """Write the shards of ``task`` (module docstring) into ``out_dir``, frames at ``size`` px.

    Resumable: complete shards already in ``out_dir`` are kept. Open-ended tasks also get
    ``answers.txt`` (one answer per line, line ``i`` = answer index ``i``).

    Returns ``{split: [shard paths], "skipped": [MissingItem], "answers": path or None,
    "annotation_source": the files read}``. Raises MissingItemsError (before anything is
    written) when annotated items lack frames or codes and ``skip_missing`` is false.
    """
    plan = plan_violet(root, task, vq, annotation)
    if plan.missing and not skip_missing:
        raise MissingItemsError(f"VIOLET {task}", plan.missing)
    kind = VideoCaptions if TASKS[task].kind == "retrieval" else VideoQA
    materialise: Callable[[Entry], Sample] = functools.partial(materialise_entry, size=size)
    result: dict = {"skipped": plan.missing, "annotation_source": plan.annotation_source}
    for split, entries in plan.entries.items():
        result[split] = write_shards(
            entries, materialise, out_dir, split, kind, samples_per_shard, workers
        )
    result["answers"] = None
    if plan.answers:
        answers = Path(out_dir) / "answers.txt"
        answers.write_text("\n".join(plan.answers) + "\n")
        result["answers"] = answers
    return result
