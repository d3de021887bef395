"""The cache of generated datasets: where it is, its folders' names, one generating process at a
time, and small files derived from the generated datasets."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from meltr.atomic_files import write_text_atomically


def cache_root() -> Path:
    """Where the built-in datasets are generated: ``$MELTR_CACHE`` (default ``~/.cache/meltr``)."""
    return Path(os.environ.get("MELTR_CACHE", Path.home() / ".cache" / "meltr"))


def cache_folder(prefix: str, arguments: dict, labels: Sequence[str] = ()) -> Path:
    """``cache_root() / "<prefix>-<name><value>-...[-<label>...]"``: the folder of the dataset
    generated with ``arguments`` (named in sorted order), then ``labels``."""
    name = "-".join([prefix, *(f"{key}{value}" for key, value in sorted(arguments.items()))])
    return cache_root() / "-".join([name, *labels])


@contextlib.contextmanager
def generation_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``.<name>.lock`` beside
    ``directory`` for the block. Processes that check or generate the same dataset at once
    (runs started together by ``tools/compare.py --jobs``, the ranks of a node) take turns, so
    a later one finds the dataset complete instead of writing over a half-written shard. The
    lock is released when the block ends or the process dies. Not reentrant: a process that
    holds it and asks for it again waits forever."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_text_file(folder: str, name: str, lines: Sequence[str]) -> str:
    """The path of ``cache_root() / folder / name`` holding ``lines``, one a line; rewritten when
    it differs (under the file's lock, atomically: ranks starting together never read a partial
    file)."""
    path = cache_root() / folder / name
    text = "".join(f"{line}\n" for line in lines)
    with generation_lock(path):
        if not path.is_file() or path.read_text() != text:
            write_text_atomically(path, text)
    return str(path)
