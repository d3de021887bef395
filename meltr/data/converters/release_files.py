"""What the converters share: listed items that cannot be written (``MissingItem``,
``MissingItemsError``), and reading the releases' pickle, csv, json and text files with errors
that name the file."""

from __future__ import annotations

import csv
import json
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NAMED_AT_MOST = 20


@dataclass(frozen=True)
class MissingItem:
    """A listed item (clip, video, utterance) that cannot be written, and why."""

    item_id: str
    split: str
    reason: str

    def __str__(self) -> str:
        return f"{self.item_id} ({self.split}: {self.reason})"


class MissingItemsError(ValueError):
    """Listed items that cannot be converted; ``missing`` names them all."""

    def __init__(self, dataset: str, missing: list[MissingItem]) -> None:
        self.missing = missing
        shown = ", ".join(str(item) for item in missing[:_NAMED_AT_MOST])
        more = f" and {len(missing) - _NAMED_AT_MOST} more" if len(missing) > _NAMED_AT_MOST else ""
        super().__init__(
            f"{len(missing)} listed {dataset} items cannot be converted: {shown}{more} "
            "(pass skip_missing / --skip-missing to leave them out)"
        )


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else FileNotFoundError naming it and what it should hold."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist ({what})")
    return path


def load_pickle(path: Path, what: str) -> Any:
    """Unpickle a release file (only for files you trust: unpickling runs code), saying so on
    stderr since the releases' feature pickles take a while."""
    require_file(path, what)
    print(f"reading {path} ...", file=sys.stderr, flush=True)
    try:
        with open(path, "rb") as file:
            return pickle.load(file)
    except Exception as error:  # damaged bytes make unpickling raise almost any exception
        raise ValueError(f"{path} is not a readable pickle ({what}): {error!r}") from error


def load_json(path: Path, what: str) -> Any:
    require_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({what}): {error}") from error


def read_csv_rows(
    path: Path, columns: tuple[str, ...], what: str, delimiter: str = ","
) -> list[dict[str, str]]:
    """The rows of a csv (``delimiter="\t"``: tsv) with a header, values stripped; ValueError
    naming the file when columns are absent or it is not text (a binary or damaged file)."""
    require_file(path, what)
    try:
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file, delimiter=delimiter)
            absent = set(columns) - set(reader.fieldnames or [])
            if absent:
                raise ValueError(f"{path}: missing column(s) {sorted(absent)} ({what})")
            return [
                {key: (value or "").strip() for key, value in row.items() if key is not None}
                for row in reader
            ]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not a readable csv ({what}): {error}") from error


def read_lines(path: Path, what: str) -> list[str]:
    """The non-empty lines of a text file, stripped; ValueError naming it when it is not text."""
    require_file(path, what)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a text file ({what}): {error}") from error
    return [line.strip() for line in text.splitlines() if line.strip()]
