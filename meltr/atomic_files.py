"""Replacing a small text file so that a crash never leaves it half written (stdlib only; used by
the data converters' records and the training run's files)."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Replace ``path``'s content by ``text`` so that a crash at any point leaves either the old
    or the new content (a synced temporary file renamed over it)."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    with open(staging, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(staging, path)
