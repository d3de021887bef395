"""The one checkpointing interface of a training run: save in the format chosen once, resume from
whatever the run directory holds.

Formats (``Checkpointer(directory, sharded=...)``, chosen by the run's strategy):

- single file (one process): ``<checkpoints>/last.pt`` (the previous one kept as ``last.prev.pt``)
  and ``<checkpoints>/best.pt``, each a ``torch.save`` dict written atomically
  (``meltr.train.single_file``): ``format`` ``"meltr-train"``, ``version``, ``model`` (state dict),
  ``learner`` (``MetaLearner.state_dict()``), ``schedule`` (the LR schedule's state), ``rng``
  (global torch / python / numpy states), ``step``, ``batches_consumed``, ``best`` (metric,
  value, step, metrics), ``wandb_run_id``, ``totals`` (run-long counters), ``health`` (the
  health checks' state);
- sharded (``Distributed.strategy`` "replicate" / "fsdp"): ``<checkpoints>/last/step-*/`` (the
  newest two kept) and ``<checkpoints>/best/step-*/``, ``torch.distributed.checkpoint`` shards of
  the model and its optimizer plus the replicated learner state and per-rank states
  (``meltr.train.sharded``).

``resume`` reads either format into the current run's objects (a sharded checkpoint also into a
plain one-process run, and at any world size), trying the checkpoint of the highest step first
(``meltr.train.saved_checkpoints``) and falling back to the next valid one, saying so; it never
modifies a checkpoint. The restored state continues under the current configuration (``restore``).
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from meltr.train import sharded
from meltr.train.saved_checkpoints import (
    CHECKPOINT_NAMES,
    FORMAT,
    VERSION,
    CheckpointError,
    SavedCheckpoint,
    load_model_state,
    read_training_file,
    saved_checkpoints,
)
from meltr.train.single_file import save_atomic

logger = logging.getLogger(__name__)


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
    log_tail: dict[str, dict] = field(default_factory=dict)  # see Trainer._save


@dataclass
class TrainingState:
    """The objects a checkpoint saves and restores (mutated in place by a restore)."""

    model: nn.Module
    learner: Any  # meltr.MetaLearner
    lr_schedule: torch.optim.lr_scheduler.LRScheduler


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
        """Save ``state`` as checkpoint ``name``; CheckpointWriteError (on every rank) when it
        cannot be written, the previous checkpoint intact."""
        if name not in CHECKPOINT_NAMES:
            raise ValueError(f"checkpoint name must be one of {CHECKPOINT_NAMES}, got {name!r}")
        try:
            if self.sharded:
                keep = 2 if name == "last" else 1
                _save_sharded(self.directory / name, state, progress, keep=keep)
            elif self.is_main:
                previous = self.directory / "last.prev.pt" if name == "last" else None
                save_atomic(
                    _single_file_payload(state, progress), self.directory / f"{name}.pt", previous
                )
        except OSError as error:
            raise CheckpointWriteError(
                f"cannot write the {name} checkpoint of step {progress.step} into "
                f"{self.directory}: {error.strerror or error}"
            ) from error


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written (a full disk, a quota, an I/O error); the message
    names it and the reason. The previous checkpoint is intact."""


def _single_file_payload(state: TrainingState, progress: Progress) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": state.model.state_dict(),
        "learner": state.learner.state_dict(),
        "schedule": state.lr_schedule.state_dict(),
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
        "log_tail": dict(progress.log_tail),
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
            "schedule": state.lr_schedule.state_dict(),
            "progress": asdict(progress),
        },
        rank_state={"buffer": buffer, "rng": capture_rng_state()},
        keep=keep,
    )


# ---------------------------------------------------------------- reading


def restore(
    saved: SavedCheckpoint, state: TrainingState, sharded_run: bool
) -> tuple[Progress, dict[str, Any]]:
    """Load ``saved`` into ``state`` (mutated in place); return its Progress and the RNG states
    to restore once the data stream has started (this rank's, else rank 0's).

    The checkpoint gives the state (weights, optimizer moments, meta network, counters, replay
    buffer); the current configuration gives the settings: both optimizers keep the
    hyperparameters they were built with (a learning rate changed on ``--resume`` is the new base
    rate), and the LR schedule, built for the current ``train.steps``, is stepped to the
    checkpoint's step (``advance_schedule``). Unchanged settings give exactly the uninterrupted
    run's learning rates.

    A single-file checkpoint resumes a one-process run; a sharded one any run, at any world size
    (the replay buffer's batches are re-split over the ranks). CheckpointError when ``saved``
    cannot be read or does not fit.
    """
    optimizers = [state.learner.optimizer, state.learner.meta_optimizer]
    configured = [_hyperparameters(optimizer) for optimizer in optimizers]
    try:
        if saved.sharded:
            progress, rng = _restore_sharded(saved.path, state)
        else:
            progress, rng = _restore_single_file(saved, state, sharded_run)
    finally:
        for optimizer, groups in zip(optimizers, configured, strict=True):
            _set_hyperparameters(optimizer, groups)
    advance_schedule(state.lr_schedule, progress.step)
    return progress, rng


def _hyperparameters(optimizer: torch.optim.Optimizer | None) -> list[dict[str, Any]]:
    if optimizer is None:
        return []
    return [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]


def _set_hyperparameters(optimizer: torch.optim.Optimizer | None, groups: list[dict]) -> None:
    if optimizer is not None:
        for group, configured in zip(optimizer.param_groups, groups, strict=True):
            group.update(configured)


def advance_schedule(schedule: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    """Step a freshly built ``schedule`` ``steps`` times without training, as the loop steps it
    after every update: the optimizer then holds the learning rates of update ``steps`` of the
    configured schedule, computed by the same arithmetic an uninterrupted run did (so resuming
    stays exact, also for recursive schedules such as MultiStepLR). About 10 us per step."""
    with warnings.catch_warnings():  # torch warns that no optimizer.step() came first
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step", category=UserWarning)
        for _ in range(steps):
            schedule.step()


def _restore_single_file(
    saved: SavedCheckpoint, state: TrainingState, sharded_run: bool
) -> tuple[Progress, dict[str, Any]]:
    if sharded_run:
        raise CheckpointError(
            f"{saved.path} is a single-file checkpoint of a one-process run; resume it with "
            "Distributed.strategy='none' in one process"
        )
    content = read_training_file(saved.path)
    load_model_state(state.model, content["model"], saved.path)
    try:
        state.learner.load_state_dict(content["learner"])
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
        log_tail=dict(content.get("log_tail", {})),
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
    except (RuntimeError, ValueError, KeyError, OSError, EOFError) as error:
        raise CheckpointError(f"cannot resume from {path}: {error}") from error
    own = rank if rank < loaded.saved_world_size else 0
    return Progress(**loaded.replicated_state["progress"]), loaded.rank_states[own]["rng"]


@dataclass
class Resumed:
    """What ``resume`` restored: the progress, the RNG states to restore once the data stream
    has started, the checkpoint used, and the newer ones that could not be used (each with the
    reason), which the run sets aside before it writes (``saved_checkpoints.set_aside``)."""

    progress: Progress
    rng: dict[str, Any]
    used: SavedCheckpoint
    skipped: list[tuple[SavedCheckpoint, str]]


def resume(directory: str | os.PathLike, state: TrainingState, sharded_run: bool) -> Resumed:
    """Restore the newest valid checkpoint under ``directory`` into ``state``.

    Tries the checkpoints in ``saved_checkpoints`` order (highest step first); one that cannot be
    read or does not fit is reported (a warning naming it and the reason) and the next is tried.
    CheckpointError when the directory holds none, or naming every file and what is wrong when
    none works. Modifies no file.
    """
    candidates = saved_checkpoints(directory)
    if not candidates:
        raise CheckpointError(f"--resume: {directory} holds no checkpoint, nothing to resume")
    skipped = []
    for saved in candidates:
        try:
            progress, rng = restore(saved, state, sharded_run)
        except CheckpointError as error:
            skipped.append((saved, str(error)))
            logger.warning("cannot resume from %s (%s); trying an older checkpoint", saved, error)
            continue
        if skipped:
            logger.warning("resuming from %s, the newest valid checkpoint", saved)
        return Resumed(progress, rng, saved, skipped)
    raise CheckpointError(
        "--resume: no checkpoint can be resumed from: " + "; ".join(r for _, r in skipped)
    )
