"""Convert a labelled text table (CSV, TSV or JSON lines; plain, ``.gz`` or ``.bz2``) into
``text_label`` shards (docs/ARCHITECTURE.md) with a seeded train / val / test split.

The format comes from the file name: ``.csv``, ``.tsv`` / ``.tab`` or ``.jsonl`` / ``.ndjson``,
optionally followed by ``.gz`` or ``.bz2``. CSV and TSV files have a header row; a JSON-lines file
holds one object per line. Rows whose text or label is empty are skipped and counted; with
``labels`` given, rows of other labels are dropped and counted per label. The class names (in label
order) are written to ``classes.json`` beside the shards.

The split is drawn over groups when a group column is given (every row of a group, e.g. every
review of one movie, lands in the same split), else over rows: groups in a seeded random order fill
the test split up to its size, then the validation split, and the rest is the training split,
optionally cut to a seeded random subset of ``train_size`` rows. A size below 1 is a fraction of
the kept rows, a size of 1 or more a number of rows (as scikit-learn's ``train_test_split``).
Every check runs before anything is written: a bad input loses nothing.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meltr.data.decoders import TextLabel
from meltr.data.writer import Sample, write_shards

FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
OPENERS = {".gz": gzip.open, ".bz2": bz2.open}
SPLITS = ("train", "val", "test")


class TextTableError(ValueError):
    """An input table that cannot be converted (the message names the file and the reason)."""


@dataclass(frozen=True)
class TextRow:
    """One row to write (a ``write_shards`` description); ``key`` is its row number."""

    key: str
    split: str
    text: str
    label: int
    class_name: str
    group: str | None


@dataclass
class TextPlan:
    """What ``write_text_classification`` writes, and what it left out."""

    classes: list[str]
    splits: dict[str, list[TextRow]]
    skipped_empty_text: int = 0
    skipped_empty_label: int = 0
    dropped_labels: dict[str, int] = field(default_factory=dict)
    unused_train_rows: int = 0


def table_format(path: Path) -> tuple[str, object]:
    """``(format, opener)`` of ``path`` from its suffixes; TextTableError for another name."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    opener = OPENERS.get(suffixes[-1]) if suffixes else None
    if opener is not None:
        suffixes = suffixes[:-1]
    kind = FORMATS.get(suffixes[-1]) if suffixes else None
    if kind is None:
        raise TextTableError(
            f"{path}: unknown table format; the name must end in one of "
            f"{', '.join(FORMATS)}, optionally followed by {' or '.join(OPENERS)}"
        )
    return kind, opener or open


def _rows(path: Path, kind: str, text: io.TextIOBase) -> tuple[list[str], Iterator[dict]]:
    if kind == "jsonl":
        return [], _json_rows(path, text)
    reader = csv.DictReader(text, delimiter="," if kind == "csv" else "\t")
    return list(reader.fieldnames or []), iter(reader)


def _json_rows(path: Path, text: io.TextIOBase) -> Iterator[dict]:
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TextTableError(f"{path}: line {number} is not JSON ({error})") from error
        if not isinstance(row, dict):
            raise TextTableError(f"{path}: line {number} is a {type(row).__name__}, not an object")
        yield row


def _cell(value: object) -> str:
    return "" if value is None else str(value).strip()


def read_table(path: str | os.PathLike, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of the table at ``path``, each ``{column: stripped text}`` for ``columns`` ("" when
    absent from a JSON line). TextTableError naming the file for a missing file, an unreadable or
    empty one, and a column no row has (the present ones are listed)."""
    path = Path(path)
    if not path.is_file():
        raise TextTableError(f"{path} does not exist")
    kind, opener = table_format(path)
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as text:
            header, rows = _rows(path, kind, text)
            rows = list(rows)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise TextTableError(f"cannot read {path}: {error}") from error
    if not rows:
        raise TextTableError(f"{path} is empty: no data rows")
    present = header or sorted({key for row in rows for key in row})
    absent = [column for column in columns if column not in present]
    if absent:
        raise TextTableError(f"{path} has no column(s) {absent}; its columns are {present}")
    return [{column: _cell(row.get(column)) for column in columns} for row in rows]


def _size(value: float, total: int, name: str) -> int:
    """A split size: a fraction of ``total`` when below 1, else a number of rows."""
    if value < 0 or (value >= 1 and value != int(value)):
        raise ValueError(
            f"{name} must be a fraction in [0, 1) or a whole number of rows, got {value}"
        )
    return round(value * total) if value < 1 else int(value)


def assign_splits(
    groups: Sequence[str], test_size: int, val_size: int, seed: int
) -> dict[str, str]:
    """``group -> split``: the distinct ``groups`` in a seeded random order fill ``test`` until it
    holds at least ``test_size`` rows, then ``val`` up to ``val_size``; the rest is ``train``."""
    counts = Counter(groups)
    order = list(counts)
    permutation = np.random.default_rng(seed).permutation(len(order))
    assignment, filled = {}, {"test": 0, "val": 0}
    for index in permutation:
        group = order[index]
        split = next(
            (s for s, size in (("test", test_size), ("val", val_size)) if filled[s] < size), "train"
        )
        assignment[group] = split
        if split != "train":
            filled[split] += counts[group]
    return assignment


def plan_text_classification(
    path: str | os.PathLike,
    text_column: str,
    label_column: str,
    group_column: str | None = None,
    labels: Sequence[str] | None = None,
    val_size: float = 0.1,
    test_size: float = 0.1,
    train_size: float | None = None,
    seed: int = 0,
) -> TextPlan:
    """What ``write_text_classification`` writes (module docstring); reads and checks everything,
    writes nothing. TextTableError naming the file and column for a table that cannot make a
    classification dataset (fewer than two classes, a requested label it lacks, an empty split)."""
    columns = [text_column, label_column] + ([group_column] if group_column else [])
    plan = TextPlan(classes=[], splits={})
    kept = _usable_rows(read_table(path, columns), text_column, label_column, labels, plan)
    plan.classes = _classes(path, label_column, labels, kept, plan)
    group_of = [row[group_column] if group_column else str(number) for number, row in kept]
    assignment = assign_splits(
        group_of,
        _size(test_size, len(kept), "test_size"),
        _size(val_size, len(kept), "val_size"),
        seed,
    )
    index = {name: label for label, name in enumerate(plan.classes)}
    splits: dict[str, list[TextRow]] = {split: [] for split in SPLITS}
    for (number, row), group in zip(kept, group_of, strict=True):
        split = assignment[group]
        label = row[label_column]
        splits[split].append(
            TextRow(
                f"{number:07d}",
                split,
                row[text_column],
                index[label],
                label,
                row[group_column] if group_column else None,
            )
        )
    plan.splits = _shuffled(splits, train_size, seed, plan)
    for split in ("train", "test"):
        if not plan.splits[split]:
            raise TextTableError(
                f"{path}: the {split} split is empty ({len(kept)} usable rows in "
                f"{len(set(group_of))} groups); lower val_size / test_size"
            )
    return plan


def _usable_rows(
    rows: Sequence[dict[str, str]],
    text_column: str,
    label_column: str,
    labels: Sequence[str] | None,
    plan: TextPlan,
) -> list[tuple[int, dict[str, str]]]:
    """``(row number, row)`` of the rows with a text and a label (one of ``labels`` when given);
    the others counted in ``plan``'s ``skipped_empty_text``, ``skipped_empty_label`` and
    ``dropped_labels``."""
    kept = []
    for number, row in enumerate(rows):
        if not row[text_column]:
            plan.skipped_empty_text += 1
        elif not row[label_column]:
            plan.skipped_empty_label += 1
        elif labels is not None and row[label_column] not in labels:
            plan.dropped_labels[row[label_column]] = (
                plan.dropped_labels.get(row[label_column], 0) + 1
            )
        else:
            kept.append((number, row))
    return kept


def _classes(
    path: str | os.PathLike,
    label_column: str,
    labels: Sequence[str] | None,
    kept: list[tuple[int, dict[str, str]]],
    plan: TextPlan,
) -> list[str]:
    """The class names: ``labels`` in their order, else the ``kept`` rows' labels sorted.
    TextTableError when a requested label has no row or there are fewer than two classes."""
    found = sorted({row[label_column] for _, row in kept})
    if labels is not None:
        unseen = [label for label in labels if label not in found]
        if unseen:
            raise TextTableError(
                f"{path}: label column {label_column!r} has no row labelled {unseen} (it has "
                f"{found + sorted(plan.dropped_labels)})"
            )
    classes = list(labels) if labels is not None else found
    if len(classes) < 2:
        raise TextTableError(
            f"{path}: label column {label_column!r} has {len(classes)} class(es) "
            f"{classes} among the usable rows; classification needs at least two"
        )
    return classes


def _shuffled(
    splits: dict[str, list[TextRow]], train_size: float | None, seed: int, plan: TextPlan
) -> dict[str, list[TextRow]]:
    """Each split in a seeded random order (so that shards mix groups); the training split cut to
    ``train_size`` rows, the cut counted in ``plan.unused_train_rows``."""
    rng = np.random.default_rng([seed, 1])
    result = {}
    for split, rows in splits.items():
        rows = [rows[i] for i in rng.permutation(len(rows))]
        if split == "train" and train_size is not None:
            wanted = _size(train_size, len(rows), "train_size")
            plan.unused_train_rows = max(0, len(rows) - wanted)
            rows = rows[:wanted]
        result[split] = rows
    return result


def materialise_text(row: TextRow) -> Sample:
    """The shard sample of one row."""
    record = {
        "text_id": row.key,
        "text": row.text,
        "label": row.label,
        "class_name": row.class_name,
        "split": row.split,
    }
    if row.group is not None:
        record["group"] = row.group
    return {"__key__": row.key, "json": record}


def write_text_classification(
    plan: TextPlan, out_dir: str | os.PathLike, samples_per_shard: int = 1000
) -> None:
    """Write the ``plan`` (``plan_text_classification``) as ``train-*.tar``, ``val-*.tar`` (when
    not empty), ``test-*.tar`` and ``classes.json`` into ``out_dir``; resumable (complete shards
    are kept)."""
    for split, rows in plan.splits.items():
        if rows:
            write_shards(rows, materialise_text, out_dir, split, TextLabel, samples_per_shard)
    (Path(out_dir) / "classes.json").write_text(json.dumps(plan.classes) + "\n")
