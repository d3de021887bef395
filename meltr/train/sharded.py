"""Sharded, atomic training checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout of one checkpoint (every rank writes its shards; the directory must be on a filesystem all
ranks share)::

    <checkpoints>/step-00000120/
        model/            DCP: the backbone's parameters and buffers (FSDP shards, or replicated)
        optimizer/        DCP: the backbone optimizer's state, sharded like the parameters
        replicated.pt     rank 0: state identical on every rank (meta net, meta optimizer, step)
        rank-00000.pt     each rank: state local to that rank (its RNG, its replay-buffer batches)
        info.json         {"step": 120, "world_size": 2}; written last
    <checkpoints>/latest  the name of the newest complete checkpoint

A save writes into ``.step-00000120.tmp`` and renames it when every rank has finished, so a crash
mid-save leaves the previous checkpoint as ``latest``; the next save removes what a killed save
left. A write that fails on one rank (a full disk) fails the save on every rank, with an OSError
of the same errno, instead of leaving the others waiting at the next collective. Loading works at
any world size: DCP reshards model and optimizer; rank-local batches can be re-split with
``reslice_batches``.

``meltr.train.checkpointing`` puts a training run into this layout.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from meltr.atomic_files import write_text_atomically
from meltr.train.single_file import save_to_file

LATEST = "latest"
INFO = "info.json"
REPLICATED = "replicated.pt"


@dataclass
class LoadedCheckpoint:
    """What ``load_sharded`` returns besides the model and optimizer it fills in place.

    step: the step the checkpoint was saved at.
    saved_world_size: how many ranks saved it.
    replicated_state: rank 0's ``replicated_state`` as saved.
    rank_states: every saving rank's ``rank_state``, in rank order (``saved_world_size`` entries).
    """

    step: int
    saved_world_size: int
    replicated_state: dict[str, Any]
    rank_states: list[dict[str, Any]]


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def save_sharded(
    checkpoints: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    replicated_state: Mapping[str, Any],
    rank_state: Mapping[str, Any],
    keep: int = 2,
) -> Path:
    """Save a checkpoint of ``step`` under ``checkpoints`` (a collective: call on every rank).

    model / optimizer: the (possibly DDP- or FSDP-wrapped) backbone and its optimizer.
    replicated_state: state that is identical on all ranks; only rank 0's copy is written.
    rank_state: this rank's own state. Both are ``torch.save``-able with ``weights_only`` loading
    (tensors, numbers, strings, lists, tuples, dicts).
    keep: how many complete checkpoints to keep (older ones are deleted after the save).
    Returns the final directory. Mutates nothing.
    """
    if keep < 1:
        raise ValueError(f"save_sharded: keep={keep} must be at least 1")
    root = Path(checkpoints)
    rank, world_size = rank_and_world_size()
    final = root / checkpoint_name(step)
    staging = root / f".{final.name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step-*.tmp"):  # left by a killed or failed save
            shutil.rmtree(stale, ignore_errors=True)
        staging.mkdir()
    _barrier()

    failure = None
    try:
        dcp.save(get_model_state_dict(model), checkpoint_id=staging / "model")
        dcp.save(get_optimizer_state_dict(model, optimizer), checkpoint_id=staging / "optimizer")
        _save_file(dict(rank_state), staging / _rank_file(rank))
        if rank == 0:
            _save_file(dict(replicated_state), staging / REPLICATED)
    except OSError as error:  # this rank's files (a full disk, ...)
        failure = error
    except CheckpointException as error:  # DCP's, raised on every rank alike
        causes = [cause for cause, _ in error.failures.values()]
        failure = next((c for c in causes if isinstance(c, OSError)), None)
        if failure is None:  # torch's writer hides the errno: "unexpected pos ..."
            failure = OSError(0, f"DCP could not write the shards: {causes[0]!r}", str(staging))
    _raise_on_every_rank(failure, staging)

    if rank == 0:
        (staging / INFO).write_text(json.dumps({"step": step, "world_size": world_size}))
        _replace_directory(staging, final)
        write_text_atomically(root / LATEST, final.name)
        _prune(root, keep)
    _barrier()
    return final


def latest_sharded(checkpoints: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``checkpoints``, or None when there is none."""
    root = Path(checkpoints)
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / INFO).is_file():
            return candidate
    complete = sorted(path for path in root.glob("step-*") if (path / INFO).is_file())
    return complete[-1] if complete else None


def read_info(checkpoint: str | os.PathLike) -> dict[str, int]:
    """A complete checkpoint's ``info.json``: ``{"step", "world_size"}``. FileNotFoundError when
    the checkpoint is incomplete, ValueError when the file is damaged (both name it)."""
    info_file = Path(checkpoint) / INFO
    if not info_file.is_file():
        raise FileNotFoundError(f"{checkpoint} is not a complete checkpoint: {INFO} is missing")
    try:
        info = json.loads(info_file.read_text())
        return {"step": int(info["step"]), "world_size": int(info["world_size"])}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{info_file} is damaged: {error!r}") from error


def load_sharded(
    checkpoint: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer
) -> LoadedCheckpoint:
    """Fill ``model`` and ``optimizer`` (wrapped as in the current run, any world size) from
    ``checkpoint`` in place and return the rest of its state. A collective: call on every rank."""
    path = Path(checkpoint)
    info = read_info(path)

    model_state = get_model_state_dict(model)
    dcp.load(model_state, checkpoint_id=path / "model")
    set_model_state_dict(model, model_state)
    # A fresh optimizer's template has state for every parameter; the saved one lacks the
    # parameters that never had a gradient (heads of unused tasks), which keep their empty state.
    optimizer_state = get_optimizer_state_dict(model, optimizer)
    dcp.load(
        optimizer_state,
        checkpoint_id=path / "optimizer",
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )
    set_optimizer_state_dict(model, optimizer, optimizer_state)

    rank_states = [
        torch.load(path / _rank_file(rank), map_location="cpu", weights_only=True)
        for rank in range(info["world_size"])
    ]
    replicated = torch.load(path / REPLICATED, map_location="cpu", weights_only=True)
    return LoadedCheckpoint(info["step"], info["world_size"], replicated, rank_states)


def load_sharded_model(checkpoint: str | os.PathLike, model: nn.Module) -> None:
    """Fill only ``model`` (plain or wrapped) from ``checkpoint``'s DCP model shards."""
    model_state = get_model_state_dict(model)
    dcp.load(model_state, checkpoint_id=Path(checkpoint) / "model")
    set_model_state_dict(model, model_state)


def reslice_batches(
    batches_per_rank: Sequence[Sequence[Mapping[str, Any]]], rank: int, world_size: int
) -> list[dict[str, Any]]:
    """Re-split rank-local batches saved at one world size for ``rank`` of ``world_size``.

    ``batches_per_rank[r][i]`` is batch ``i`` as saving rank ``r`` held it (a slice of global batch
    ``i``). Each global batch is rebuilt by concatenating the slices in rank order (tensors along
    dim 0, lists end to end; other values are taken from rank 0) and cut into ``world_size`` equal
    slices; slice ``rank`` is returned. The global batch size must divide by ``world_size``.
    """
    lengths = {len(batches) for batches in batches_per_rank}
    if len(lengths) != 1:
        raise ValueError(
            f"reslice_batches: saving ranks hold different numbers of batches {lengths}"
        )
    result = []
    for slices in zip(*batches_per_rank, strict=True):
        whole = _concatenate(slices)
        size = _batch_size(whole)
        if size % world_size:
            raise ValueError(
                f"reslice_batches: global batch of {size} samples cannot be split over "
                f"{world_size} ranks"
            )
        part = size // world_size
        result.append(_slice(whole, rank * part, (rank + 1) * part))
    return result


def _concatenate(slices: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    whole = {}
    for key, first in slices[0].items():
        if isinstance(first, torch.Tensor) and first.dim() > 0:
            whole[key] = torch.cat([part[key] for part in slices])
        elif isinstance(first, list):
            whole[key] = [item for part in slices for item in part[key]]
        else:
            whole[key] = first
    return whole


def _batch_size(batch: Mapping[str, Any]) -> int:
    sizes = {
        len(value)
        for value in batch.values()
        if isinstance(value, list) or (isinstance(value, torch.Tensor) and value.dim() > 0)
    }
    if len(sizes) != 1:
        raise ValueError(f"reslice_batches: batch entries disagree on the batch size: {sizes}")
    return sizes.pop()


def _slice(batch: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {
        key: value[start:stop]
        if isinstance(value, list) or (isinstance(value, torch.Tensor) and value.dim() > 0)
        else value
        for key, value in batch.items()
    }


def _save_file(obj: Any, path: Path) -> None:
    with open(path, "wb") as file:
        save_to_file(obj, file)


def _rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the world size; (0, 1) without a process group."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _raise_on_every_rank(failure: OSError | None, staging: Path) -> None:
    """Raise ``failure`` (an OSError of one rank's write) on every rank, so that no rank waits at
    the next collective for one that has left; the ranks without one raise an OSError of the same
    errno naming ``staging``. A collective; returns when no rank failed."""
    if not dist.is_initialized():
        if failure is not None:
            raise failure
        return
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    )
    code = torch.tensor([0 if failure is None else (failure.errno or -1)], device=device)
    # MAX over ranks: any failure (errno > 0, or -1 without one) is non-zero on every rank
    dist.all_reduce(code, op=dist.ReduceOp.MAX)
    if failure is not None:
        raise failure
    if int(code.item()):
        number = int(code.item())
        message = os.strerror(number) if number > 0 else "a write failed"
        raise OSError(number, f"{message} (on another rank)", str(staging))


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _replace_directory(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` (the same step saved again after a
    resume) is moved aside first and deleted only once the new one is in place."""
    if target.exists():
        displaced = target.with_name(f".{target.name}.old")
        shutil.rmtree(displaced, ignore_errors=True)
        target.rename(displaced)
        source.rename(target)
        shutil.rmtree(displaced)
    else:
        source.rename(target)


def _prune(root: Path, keep: int) -> None:
    complete = sorted(path for path in root.glob("step-*") if (path / INFO).is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old)
