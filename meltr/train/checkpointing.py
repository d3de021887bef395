"""The one checkpointing interface of a training run: save in the format chosen once, resume from
whatever the run directory holds.

Formats (``Checkpointer(directory, sharded=...)``, chosen by the run's strategy):

- single file (one process): ``<checkpoints>/last.pt`` (the previous one kept as ``last.prev.pt``)
  and ``<checkpoints>/best.pt``, each a ``torch.save`` dict written atomically
  (``meltr.train.single_file``): ``format`` ``"meltr-train"``, ``version``, ``model`` (state dict),
  ``learner`` (``MetaLearner.state_dict()``), ``schedule``, ``rng`` (global torch / python / numpy
  states), ``step``, ``batches_consumed``, ``best`` (metric, value, step, metrics),
  ``wandb_run_id``, ``totals`` (run-long counters), ``health`` (the health checks' state);
- sharded (``Distributed.strategy`` "ddp" / "fsdp"): ``<checkpoints>/last/step-*/`` (the newest two
  kept) and ``<checkpoints>/best/step-*/``, ``torch.distributed.checkpoint`` shards of the model and
  its optimizer plus the replicated learner state and per-rank states (``meltr.train.sharded``).

``resume`` reads either format into the current run's objects (a sharded checkpoint also into a
plain one-process run, and at any world size), trying the newest checkpoint first and falling back
to the next newest valid one, saying so; it never modifies a checkpoint.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meltr.backbones.checkpoint import read_file
from meltr.train import sharded
from meltr.train.single_file import save_atomic

logger = logging.getLogger(__name__)

FORMAT = "meltr-train"
VERSION = 1
CHECKPOINT_NAMES = ("last", "best")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and the reason."""


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint.

    best_metric: the selection metric with its split (``"val/top1"``); best_value / best_step /
    best_metrics: its best value, the step it was reached at and every metric of that evaluation.
    totals: run-long counters (corrupt samples, skipped updates, time in meta steps).
    """

    step: int = 0
    batches_consumed: int = 0
    best_metric: str | None = None
    best_value: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    wandb_run_id: str | None = None
    totals: dict[str, float] = field(default_factory=dict)
    health: dict = field(default_factory=dict)  # the HealthMonitor's state


@dataclass
class TrainingState:
    """The objects a checkpoint saves and restores (mutated in place by a restore)."""

    model: nn.Module
    learner: Any  # meltr.MetaLearner
    schedule: torch.optim.lr_scheduler.LRScheduler


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


class Checkpointer:
    """Saves one run's checkpoints ``"last"`` and ``"best"`` in one format (module docstring).

    ``save`` is a collective in a sharded run (every rank calls it); in a single-file run only the
    main process writes.
    """

    def __init__(self, directory: str | os.PathLike, sharded: bool, is_main: bool = True) -> None:
        self.directory, self.sharded, self.is_main = Path(directory), sharded, is_main

    def save(self, name: str, state: TrainingState, progress: Progress) -> None:
        if name not in CHECKPOINT_NAMES:
            raise ValueError(f"checkpoint name must be one of {CHECKPOINT_NAMES}, got {name!r}")
        if self.sharded:
            _save_sharded(self.directory / name, state, progress, keep=2 if name == "last" else 1)
        elif self.is_main:
            previous = self.directory / "last.prev.pt" if name == "last" else None
            save_atomic(
                _single_file_payload(state, progress), self.directory / f"{name}.pt", previous
            )


def _single_file_payload(state: TrainingState, progress: Progress) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": state.model.state_dict(),
        "learner": state.learner.state_dict(),
        "schedule": state.schedule.state_dict(),
        "rng": capture_rng_state(),
        "step": progress.step,
        "batches_consumed": progress.batches_consumed,
        "best": {
            "metric": progress.best_metric,
            "value": progress.best_value,
            "step": progress.best_step,
            "metrics": dict(progress.best_metrics),
        },
        "wandb_run_id": progress.wandb_run_id,
        "totals": dict(progress.totals),
        "health": dict(progress.health),
    }


def _save_sharded(directory: Path, state: TrainingState, progress: Progress, keep: int) -> None:
    """The backbone and its optimizer to DCP shards; the replicated learner state (meta network,
    meta optimizer, step counter, replay generator, skip counters), the schedule and the progress
    to rank 0's file; each rank's replay-buffer batches and RNG states to its own file."""
    learner_state = state.learner.state_dict()
    learner_state.pop("optimizer")  # in the DCP shards
    buffer = learner_state.pop("buffer")
    sharded.save_sharded(
        directory,
        progress.step,
        state.model,
        state.learner.optimizer,
        replicated_state={
            "learner": learner_state,
            "schedule": state.schedule.state_dict(),
            "progress": asdict(progress),
        },
        rank_state={"buffer": buffer, "rng": capture_rng_state()},
        keep=keep,
    )


# ---------------------------------------------------------------- reading


def is_training_checkpoint(content: Any) -> bool:
    """Whether a loaded object is one of our single-file checkpoints (vs an official file)."""
    return isinstance(content, dict) and content.get("format") == FORMAT


def read_training_file(path: str | os.PathLike) -> dict[str, Any]:
    """A single-file checkpoint's dict; CheckpointError naming the file and what is wrong."""
    try:
        content = read_file(path, trust_pickle=False)
    except ValueError as error:
        raise CheckpointError(str(error)) from error
    if not is_training_checkpoint(content):
        raise CheckpointError(f"{path} is not a meltr training checkpoint (no format={FORMAT!r})")
    if content.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {content.get('version')}, expected {VERSION}"
        )
    missing = [key for key in ("model", "learner", "schedule", "rng", "step") if key not in content]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}")
    return content


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint found in a run directory: a ``.pt`` file or a sharded ``step-*`` directory."""

    path: Path
    sharded: bool

    def __str__(self) -> str:
        return str(self.path)


def saved_checkpoints(directory: str | os.PathLike) -> list[SavedCheckpoint]:
    """Every checkpoint under ``directory`` (a run's ``checkpoints/``), newest write first: single
    files ``last.pt``, ``last.prev.pt``, ``best.pt`` and sharded ``{last,best}/step-*``
    directories (those with ``info.json``, the mark of a finished save)."""
    directory = Path(directory)
    found = [
        SavedCheckpoint(directory / name, sharded=False)
        for name in ("last.pt", "last.prev.pt", "best.pt")
        if (directory / name).is_file()
    ]
    found += [
        SavedCheckpoint(step, sharded=True)
        for name in CHECKPOINT_NAMES
        for step in (directory / name).glob("step-*")
        if (step / sharded.INFO).is_file()
    ]

    def written(saved: SavedCheckpoint) -> float:
        return (saved.path / sharded.INFO if saved.sharded else saved.path).stat().st_mtime

    return sorted(found, key=written, reverse=True)


def load_model_weights(path: str | os.PathLike, model: nn.Module) -> None:
    """Load only the model weights of one of our checkpoints (a single file or a sharded
    ``step-*`` directory) into ``model`` (plain or wrapped); CheckpointError when it is neither."""
    path = Path(path)
    if path.is_dir():
        if not (path / sharded.INFO).is_file():
            raise CheckpointError(f"{path} is not a complete sharded checkpoint (no info.json)")
        sharded.load_sharded_model(path, model)
        return
    model.load_state_dict(read_training_file(path)["model"])


def restore(
    saved: SavedCheckpoint, state: TrainingState, sharded_run: bool
) -> tuple[Progress, dict[str, Any]]:
    """Load ``saved`` into ``state`` (mutated in place); return its Progress and the RNG states
    to restore once the data stream has started (this rank's, else rank 0's).

    A single-file checkpoint resumes a one-process run; a sharded one any run, at any world size
    (the replay buffer's batches are re-split over the ranks). CheckpointError when ``saved``
    cannot be read or does not fit.
    """
    if saved.sharded:
        return _restore_sharded(saved.path, state)
    if sharded_run:
        raise CheckpointError(
            f"{saved.path} is a single-file checkpoint of a one-process run; resume it with "
            "Distributed.strategy='none' in one process"
        )
    content = read_training_file(saved.path)
    try:
        state.model.load_state_dict(content["model"])
        state.learner.load_state_dict(content["learner"])
        state.schedule.load_state_dict(content["schedule"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{saved.path} does not fit this run: {error}") from error
    best = content.get("best", {})
    progress = Progress(
        step=content["step"],
        batches_consumed=content["batches_consumed"],
        best_metric=best.get("metric"),
        best_value=best.get("value"),
        best_step=best.get("step"),
        best_metrics=dict(best.get("metrics", {})),
        wandb_run_id=content.get("wandb_run_id"),
        totals=dict(content.get("totals", {})),
        health=dict(content.get("health", {})),
    )
    return progress, content["rng"]


def _restore_sharded(path: Path, state: TrainingState) -> tuple[Progress, dict[str, Any]]:
    rank, world_size = sharded.rank_and_world_size()
    try:
        loaded = sharded.load_sharded(path, state.model, state.learner.optimizer)
        buffers = [rank_state["buffer"] for rank_state in loaded.rank_states]
        state.learner.load_state_dict(
            loaded.replicated_state["learner"]
            | {
                "optimizer": state.learner.optimizer.state_dict(),
                "buffer": sharded.reslice_batches(buffers, rank, world_size),
            }
        )
        state.schedule.load_state_dict(loaded.replicated_state["schedule"])
    except (RuntimeError, ValueError, KeyError, OSError, EOFError) as error:
        raise CheckpointError(f"cannot resume from {path}: {error}") from error
    own = rank if rank < loaded.saved_world_size else 0
    return Progress(**loaded.replicated_state["progress"]), loaded.rank_states[own]["rng"]


def resume(
    directory: str | os.PathLike, state: TrainingState, sharded_run: bool
) -> tuple[Progress, dict[str, Any], SavedCheckpoint]:
    """Restore the newest valid checkpoint under ``directory`` into ``state``.

    Tries the checkpoints newest first; one that cannot be read or does not fit is reported (a
    warning naming it and the reason) and the next is tried. Returns (progress, RNG states, the
    checkpoint used). CheckpointError naming every file and what is wrong when none works.
    """
    candidates = saved_checkpoints(directory)
    if not candidates:
        raise CheckpointError(f"--resume: {directory} holds no checkpoint, nothing to resume")
    problems = []
    for saved in candidates:
        try:
            progress, rng = restore(saved, state, sharded_run)
        except CheckpointError as error:
            problems.append(str(error))
            logger.warning("cannot resume from %s (%s); trying an older checkpoint", saved, error)
            continue
        if problems:
            logger.warning("resuming from %s, the newest valid checkpoint", saved)
        return progress, rng, saved
    raise CheckpointError("--resume: no checkpoint can be resumed from: " + "; ".join(problems))
