"""The checkpoints a run directory holds: finding them newest step first, reading one, checking
that its weights fit a model, and setting aside those a run must not resume from.

A run's ``checkpoints/`` holds single files ``last.pt``, ``last.prev.pt``, ``best.pt`` and sharded
``{last,best}/step-*/`` directories (``meltr.train.checkpointing``). Which one is newest is read
from the checkpoint itself (its ``step``), never from file times: copying or touching a file must
not change which state a run continues from. Checkpoints that must not be resumed from (unreadable
ones newer than the one used, or one a diverged run was saved from) are moved into
``checkpoints/set_aside/``, named with the reason, so that no later save rotates or prunes them
away and no later ``--resume`` picks them; nothing is deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from meltr.backbones.checkpoint import read_file
from meltr.train import sharded

FORMAT = "meltr-train"
VERSION = 1
CHECKPOINT_NAMES = ("last", "best")
SINGLE_FILES = ("last.pt", "last.prev.pt", "best.pt")
SET_ASIDE = "set_aside"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and the reason."""


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
    """A checkpoint found in a run directory: a ``.pt`` file or a sharded ``step-*`` directory,
    and the step it was saved at (None when that cannot be read: a damaged file)."""

    path: Path
    sharded: bool
    step: int | None

    def __str__(self) -> str:
        return str(self.path)


def saved_checkpoints(directory: str | os.PathLike) -> list[SavedCheckpoint]:
    """Every checkpoint under ``directory`` (a run's ``checkpoints/``), the order to try them in:
    those whose step cannot be read first (they may be the newest; trying one costs a failed
    read), then by step, highest first; at one step ``last`` before ``last.prev`` before
    ``best``. Sharded checkpoints count only once complete (``info.json`` written)."""
    directory = Path(directory)
    found = [
        SavedCheckpoint(directory / name, False, _file_step(directory / name))
        for name in SINGLE_FILES
        if (directory / name).is_file()
    ]
    found += [
        SavedCheckpoint(path, True, _directory_step(path))
        for name in CHECKPOINT_NAMES
        for path in sorted((directory / name).glob("step-*"))
        if (path / sharded.INFO).is_file()
    ]
    # sorted() is stable: at one step, the order above (last, last.prev, best) is kept.
    return sorted(found, key=lambda saved: (saved.step is not None, -(saved.step or 0)))


def newest_readable(directory: str | os.PathLike) -> SavedCheckpoint | None:
    """The checkpoint of the highest step under ``directory`` whose step can be read (the one
    ``--resume`` would continue from, unless it turns out damaged), or None."""
    readable = [saved for saved in saved_checkpoints(directory) if saved.step is not None]
    return readable[0] if readable else None


def _file_step(path: Path) -> int | None:
    """The ``step`` of a single-file checkpoint, read without loading its tensors (memory-mapped);
    None when the file cannot be read that way."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(content["step"])
    except Exception:  # any damage: the full read reports it when this checkpoint is tried
        return None


def _directory_step(path: Path) -> int | None:
    try:
        return sharded.read_info(path)["step"]
    except (OSError, ValueError):
        return None


def set_aside(saved: SavedCheckpoint, reason: str) -> Path:
    """Move ``saved`` into ``checkpoints/set_aside/`` as ``<name>.<reason>`` (sharded:
    ``<last|best>-step-N.<reason>``; a number is appended when that name is taken); return the
    new path. The checkpoint is kept as it is, out of reach of saves and of ``--resume``."""
    checkpoints = saved.path.parents[1] if saved.sharded else saved.path.parent
    name = f"{saved.path.parent.name}-{saved.path.name}" if saved.sharded else saved.path.name
    target = checkpoints / SET_ASIDE / f"{name}.{reason}"
    target.parent.mkdir(exist_ok=True)
    number = 1
    while target.exists():
        target = target.with_name(f"{name}.{reason}.{number}")
        number += 1
    os.replace(saved.path, target)
    return target


def load_model_weights(path: str | os.PathLike, model: nn.Module) -> None:
    """Load only the model weights of one of our checkpoints (a single file or a sharded
    ``step-*`` directory) into ``model`` (plain or wrapped); CheckpointError when it is neither
    or when its weights do not fit ``model`` (naming the first keys that differ)."""
    path = Path(path)
    if path.is_dir():
        if not (path / sharded.INFO).is_file():
            raise CheckpointError(f"{path} is not a complete sharded checkpoint (no info.json)")
        try:
            sharded.load_sharded_model(path, model)
        except (RuntimeError, ValueError, KeyError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise CheckpointError(f"{path} does not fit this model: {reason}") from error
        return
    load_model_state(model, read_training_file(path)["model"], path)


def load_model_state(model: nn.Module, state: dict[str, Any], path: str | os.PathLike) -> None:
    """``model.load_state_dict(state)``; CheckpointError naming ``path`` and, in one line, the
    keys that differ (another model, or the same model at another size) when it does not fit."""
    mismatch = describe_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(f"{path} does not fit this model: {mismatch}")
    model.load_state_dict(state)


def describe_mismatch(expected: dict[str, Any], found: dict[str, Any], shown: int = 3) -> str:
    """How the state dict ``found`` differs from ``expected`` (a model's own), in one line: the
    tensors of another shape, the keys it lacks and the keys the model lacks, each with up to
    ``shown`` names; empty when they match."""
    shapes = [
        f"{key} {tuple(found[key].shape)} vs {tuple(value.shape)} in the model"
        for key, value in expected.items()
        if key in found and torch.is_tensor(found[key]) and found[key].shape != value.shape
    ]
    parts = []
    for what, names in (
        ("of another shape", shapes),
        ("missing", [key for key in expected if key not in found]),
        ("unexpected", [key for key in found if key not in expected]),
    ):
        if names:
            more = f", and {len(names) - shown} more" if len(names) > shown else ""
            parts.append(f"{len(names)} {what} ({', '.join(names[:shown])}{more})")
    return "; ".join(parts)
