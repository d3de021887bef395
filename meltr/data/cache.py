"""The cache of generated datasets: where it is, and one generating process at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def cache_root() -> Path:
    """Where the built-in datasets are generated: ``$MELTR_CACHE`` (default ``~/.cache/meltr``)."""
    return Path(os.environ.get("MELTR_CACHE", Path.home() / ".cache" / "meltr"))


@contextlib.contextmanager
def generation_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``.<name>.lock`` beside
    ``directory`` for the block. Processes that check or generate the same dataset at once
    (runs started together by ``tools/compare.py --jobs``, the ranks of a node) take turns, so
    a later one finds the dataset complete instead of writing over a half-written shard. The
    lock is released when the block ends or the process dies."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
