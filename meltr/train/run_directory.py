"""Who may write into a run directory, checked before anything is built and again, atomically,
when the directory is created.

``check_output`` runs first (a ``ConfigError`` before any work): ``--output`` must be a directory
or not exist yet, under a writable directory, and must not hold a run unless ``--resume``.
``RunDirectoryLock`` then claims the directory for the life of the process: an advisory lock
(``fcntl.flock``) on ``<run_dir>/.lock``, taken when the run directory is created. A second
process on the same directory, however close in time, cannot take it and stops with a
``ConfigError`` naming the directory and the process that holds it (its pid and host, written
into the lock file). The kernel releases the lock when the process ends, however it ends, so a
killed run never leaves a stale lock. The "already holds a run" check is repeated under the lock,
so two fresh starts racing for one directory cannot both pass it. (``flock`` is advisory and,
on network filesystems, only as reliable as their lock support.)
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from meltr.train.config import ConfigError

RUN_FILES = ("config.gin", "metrics.jsonl", "checkpoints")
LOCK_FILE = ".lock"


def run_files(run_dir: Path) -> list[str]:
    """The names of the files that mark ``run_dir`` as holding a run (started, maybe unfinished)."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_output(run_dir: Path, resume: bool) -> None:
    """ConfigError, before any work, when ``run_dir`` cannot be this run's directory: it is a
    file, an existing part of its path is not a writable directory, it already holds a run and
    this is not ``--resume``, or this is ``--resume`` and it holds no run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--output {run_dir} is a file, not a directory; choose another --output")
    existing = run_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--output {run_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {run_dir}: cannot write into {existing} (permission denied)")
    present = run_files(run_dir)
    if resume and "config.gin" not in present:
        raise ConfigError(f"--resume: {run_dir} holds no run (no config.gin) to continue")
    if not resume and present:
        raise ConfigError(
            f"--output {run_dir} already holds a run ({', '.join(present)}); continue it with "
            "--resume, or choose a new --output"
        )


class RunDirectoryLock:
    """The advisory lock that makes one process the only writer of a run directory (module
    docstring). ``acquire`` creates the directory; ``release`` (or the end of the process) frees
    it."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._descriptor: int | None = None

    def acquire(self, fresh: bool) -> None:
        """Create the run directory and take its lock; ConfigError naming the directory and the
        holder when another process has it, or (``fresh``: not a resume) when it already holds a
        run."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 4096).decode("utf-8", "replace").strip()
            os.close(descriptor)
            raise ConfigError(
                f"--output {self.run_dir} is in use by another training process "
                f"({_describe(holder)}); wait for it to end or choose another --output"
            ) from None
        self._descriptor = descriptor
        if fresh and run_files(self.run_dir):
            self.release()
            raise ConfigError(
                f"--output {self.run_dir} already holds a run ({', '.join(run_files(self.run_dir))}"
                "); continue it with --resume, or choose a new --output"
            )
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None


def _describe(holder: str) -> str:
    try:
        fields = json.loads(holder)
        return f"pid {fields['pid']} on {fields['host']}, since {fields['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not yet written its pid"
