"""What every task's evaluator shares: gathering per-rank results, counting what was scored."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from meltr.ranks import is_data_parallel


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable; tensors should be on the CPU), in rank order. ``[value]``
    without a process group. A collective: every rank must call it."""
    if not is_data_parallel():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def concat_over_ranks(*columns: list[Tensor]) -> tuple[Tensor, ...]:
    """Each column (this rank's per-batch CPU tensors) concatenated over every rank in rank
    order. ValueError when no rank had a batch. A collective: every rank must call it."""
    shares = [share for share in all_gather_objects(columns) if share[0]]
    if not shares:
        raise ValueError("the evaluation split is empty: its loader yielded no batch")
    return tuple(
        torch.cat([part for share in shares for part in share[column]])
        for column in range(len(columns))
    )


def sum_over_views(
    score: Callable[[int | None], tuple[Tensor, Tensor, ItemCounts]], views: int, items: str
) -> tuple[Tensor, Tensor, ItemCounts]:
    """``score(view)`` returns ``(values [N, C], targets [N], counts)`` for one pass over a
    split; the values summed over ``views`` passes (``None``, the deterministic view, when
    ``views == 1``, else random views ``0 .. views - 1``), with the first pass's targets and
    counts. ValueError naming ``items`` when a view's targets differ from the first's."""
    total, targets, counts = None, None, None
    for view in [None] if views == 1 else range(views):
        values, view_targets, view_counts = score(view)
        if total is None:
            total, targets, counts = values, view_targets, view_counts
        elif not torch.equal(view_targets, targets):
            raise ValueError(f"view {view} of the split differs in its {items}")
        else:
            total = total + values
    return total, targets, counts


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode inside the block, its previous mode restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class ItemCounts:
    """How many items an evaluation scored and how many corrupt samples its loader skipped."""

    items: int = 0
    corrupt: int = 0

    def add(self, batch: Mapping[str, Any], key: str) -> None:
        """Count ``batch`` (its size is ``len(batch[key])``)."""
        self.items += len(batch[key])
        self.corrupt += int(batch.get("num_corrupt", 0))

    def metrics(self, split: str) -> dict[str, float]:
        """``{"<split>/num_items", "<split>/num_corrupt"}`` summed over ranks (a collective)."""
        shares = all_gather_objects((self.items, self.corrupt))
        return {
            f"{split}/num_items": float(sum(items for items, _ in shares)),
            f"{split}/num_corrupt": float(sum(corrupt for _, corrupt in shares)),
        }


def check_views(views: int, supports_views: bool, task: str) -> None:
    """ValueError unless ``views`` is a positive integer this task can average."""
    if not isinstance(views, int) or isinstance(views, bool) or views < 1:
        raise ValueError(f"views must be an integer >= 1, got {views!r}")
    if views > 1 and not supports_views:
        raise ValueError(f"{task} cannot average several views (views={views})")


def to_device(batch: Mapping[str, Any], keys: tuple[str, ...], device: Any) -> dict[str, Any]:
    """``{key: batch[key]}`` for ``keys``, tensors moved to ``device``; KeyError naming a missing
    key and the batch's keys."""
    missing = [key for key in keys if key not in batch]
    if missing:
        raise KeyError(f"evaluation batch lacks {missing}; it has {sorted(batch)}")
    return {key: batch[key].to(device) if hasattr(batch[key], "to") else batch[key] for key in keys}
