"""Training checkpoints: everything needed to continue a run bit-for-bit, written atomically.

A checkpoint is a dict saved with ``torch.save``:

- ``format``: ``"meltr-train"`` (tells our files from official backbone checkpoints), ``version``;
- ``model``: the model's state_dict;
- ``learner``: ``MetaLearner.state_dict()`` (meta net, both optimizers, step counter, replay
  RNG and buffer);
- ``schedule``: the LR scheduler's state_dict;
- ``rng``: global torch / python / numpy RNG states at the time of saving;
- ``step``: training steps done; ``batches_consumed``: training batches read from the data stream;
- ``best``: ``{"metric": name, "value": float | None, "step": int | None}``;
- ``wandb_run_id``: the W&B run to continue on resume (or None);
- ``totals``: run-long counters (corrupt samples, skipped updates, time in meta steps).
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "meltr-train"
VERSION = 1


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` so that a crash at any point leaves the old file intact.

    Writes a temporary file in the same directory, fsyncs it, renames it over ``path`` (atomic on
    POSIX), then fsyncs the directory. The temporary file is removed if writing fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def capture_rng_state() -> dict[str, Any]:
    """The global torch (CPU and CUDA), python and numpy RNG states."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            position,
            has_gauss,
            cached_gaussian,
        ),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of capture_rng_state."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        (kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian)
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    step: int = 0
    batches_consumed: int = 0
    best_metric: str = "test/t2v_R@1"
    best_value: float | None = None
    best_step: int | None = None
    wandb_run_id: str | None = None
    totals: dict[str, float] = field(default_factory=dict)  # run-long counters (see IntervalMeter)


def save_training_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    learner: Any,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
) -> None:
    """Atomically write the full training state (see the module docstring) to ``path``."""
    save_atomic(
        {
            "format": FORMAT,
            "version": VERSION,
            "model": model.state_dict(),
            "learner": learner.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": capture_rng_state(),
            "step": progress.step,
            "batches_consumed": progress.batches_consumed,
            "best": {
                "metric": progress.best_metric,
                "value": progress.best_value,
                "step": progress.best_step,
            },
            "wandb_run_id": progress.wandb_run_id,
            "totals": dict(progress.totals),
        },
        path,
    )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read one of our training checkpoints; ValueError naming the file if it is not one."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not is_training_checkpoint(checkpoint):
        raise ValueError(f"{path} is not a meltr training checkpoint (no format={FORMAT!r} entry)")
    if checkpoint["version"] != VERSION:
        raise ValueError(
            f"{path} has checkpoint version {checkpoint['version']}, expected {VERSION}"
        )
    return checkpoint


def is_training_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded object is one of our training checkpoints (vs an official backbone file)."""
    return isinstance(checkpoint, dict) and checkpoint.get("format") == FORMAT


def restore_training_checkpoint(
    checkpoint: dict[str, Any],
    *,
    model: torch.nn.Module,
    learner: Any,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> Progress:
    """Load a checkpoint's states into the given objects and the global RNGs; return its Progress.

    Mutates ``model``, ``learner``, ``schedule`` and the global RNG states.
    """
    model.load_state_dict(checkpoint["model"])
    learner.load_state_dict(checkpoint["learner"])
    schedule.load_state_dict(checkpoint["schedule"])
    restore_rng_state(checkpoint["rng"])
    best = checkpoint["best"]
    return Progress(
        step=checkpoint["step"],
        batches_consumed=checkpoint["batches_consumed"],
        best_metric=best["metric"],
        best_value=best["value"],
        best_step=best["step"],
        wandb_run_id=checkpoint["wandb_run_id"],
        totals=dict(checkpoint["totals"]),
    )
