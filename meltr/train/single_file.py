"""Single-file checkpoints: one ``torch.save`` file per checkpoint, written atomically.

A crash at any point of a save leaves the previous file intact; temporary files a killed save left
behind are removed by the next save of the same file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

import torch


def save_atomic(
    obj: Any, path: str | os.PathLike, previous: str | os.PathLike | None = None
) -> None:
    """``torch.save(obj)`` to ``path`` so that a crash at any point leaves the old file intact;
    a failed write raises the OSError behind it (``save_to_file``).

    Writes a temporary file in the same directory, fsyncs it, (when ``previous`` is given) moves
    the existing ``path`` to ``previous``, renames the temporary file over ``path`` (atomic on
    POSIX), then fsyncs the directory. The temporary file is removed if writing fails, and stale
    temporary files of ``path`` from killed saves are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            save_to_file(obj, file)
            file.flush()
            os.fsync(file.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_to_file(obj: Any, file: BinaryIO) -> None:
    """``torch.save(obj, file)``, raising the OSError of a failed write (ENOSPC, EDQUOT, EIO).

    torch's zip writer reports a write that failed as a RuntimeError without the cause
    ("unexpected pos ..."); the writes here go through a wrapper that keeps the OSError.
    """
    writer = _KeepWriteError(file)
    try:
        torch.save(obj, writer)
    except RuntimeError as error:
        if writer.error is None:
            raise
        raise writer.error from error


class _KeepWriteError:
    """A binary file's ``write`` and ``flush``, remembering the OSError a write raised."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()
