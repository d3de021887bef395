"""Loss helpers shared by the backbones' loss sources, exact under data parallelism.

In a data-parallel run (a torch.distributed process group with several ranks, each holding an
equal slice of the global batch) the helpers are written so that the mean of a loss over ranks,
and the mean of its gradients, equal the single-process loss of the global batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_autograd
import torch.nn.functional as F
from torch import Tensor

from meltr.ranks import is_data_parallel

IGNORE_INDEX = -100
# The answer index of an item whose answer is outside the answer vocabulary.
NO_ANSWER = -1


def symmetric_contrastive_loss(text_feat: Tensor, video_feat: Tensor, temperature: float) -> Tensor:
    """Mean of the text->video and video->text cross-entropies over in-batch pairs.

    ``text_feat`` and ``video_feat`` are L2-normalised ``[B, P]``; pair ``i`` is the positive.
    """
    logits = text_feat @ video_feat.T / temperature
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def gather_across_ranks(features: Tensor) -> Tensor:
    """Every rank's ``features`` ``[b, ...]`` concatenated along dim 0 in rank order, with autograd
    (the backward sums each rank's gradient for this rank's rows). Every rank computes the same
    global loss from the result; summing here and averaging the gradients over ranks (FSDP/DDP)
    then gives exactly the single-process gradient. Equal shapes on all ranks; identity without a
    process group."""
    if not is_data_parallel():
        return features
    return torch.cat(dist_autograd.all_gather(features), dim=0)


def masked_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over positions whose label is not -100 (0 when there are none).

    ``logits`` ``[B, L, V]``, ``labels`` int64 ``[B, L]``. In a data-parallel run the sum is
    divided by the mean masked-token count over ranks, so the mean of this loss over ranks is the
    token average over the global batch.
    """
    total = F.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return mean_over_global_count(total, labels.ne(IGNORE_INDEX).sum())


def mean_over_global_count(total: Tensor, count: Tensor) -> Tensor:
    """``total / count`` (0 when ``count`` is 0) for a loss summed over ``count`` terms of this
    rank's slice. In a data-parallel run the sum is divided by the mean count over ranks, so the
    mean of the result over ranks is the average over the terms of the global batch."""
    count = count.to(total.dtype)
    if not is_data_parallel():
        return total / count.clamp(min=1)
    global_count = count.clone()
    dist.all_reduce(global_count)
    return total / (global_count.clamp(min=1) / dist.get_world_size())


def answer_loss(logits: Tensor, answer_index: Tensor) -> Tensor:
    """Cross-entropy of ``logits`` ``[B, C]`` at ``answer_index`` int64 ``[B]``, averaged over
    the items whose answer is not -1 (outside the answer vocabulary; 0 when no item has one; in
    a data-parallel run divided by the mean such count over ranks). ValueError for an index
    outside ``[-1, C)``."""
    if answer_index.shape != logits.shape[:1]:
        raise ValueError(
            f"answer_index {tuple(answer_index.shape)} does not match logits {tuple(logits.shape)}"
        )
    bad = (answer_index < NO_ANSWER) | (answer_index >= logits.shape[1])
    if bad.any():
        raise ValueError(
            f"answer_index {answer_index[bad].tolist()} outside [-1, {logits.shape[1]})"
        )
    labels = answer_index.long().masked_fill(answer_index == NO_ANSWER, IGNORE_INDEX)
    return masked_token_loss(logits[:, None], labels[:, None])


def require(batch: Mapping[str, Tensor], *keys: str) -> list[Tensor]:
    """``batch[key]`` for each key, or KeyError naming the missing keys and the present ones."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"batch lacks key(s) {missing}; it has {sorted(batch)}")
    return [batch[k] for k in keys]


def check_tasks(
    tasks: Iterable[str], primary: Sequence[str], auxiliary: Sequence[str]
) -> tuple[str, ...]:
    """``tasks`` as a tuple, checked: the first one of ``primary``, the others distinct and from
    ``auxiliary``; ValueError naming what is wrong and what is known otherwise."""
    tasks = tuple(tasks)
    if not tasks or tasks[0] not in primary:
        raise ValueError(f"tasks must start with a primary task {tuple(primary)}, got {tasks}")
    unknown = [task for task in tasks[1:] if task not in auxiliary]
    if unknown:
        raise ValueError(
            f"unknown auxiliary task(s) {unknown} in tasks={tasks}; known: {tuple(auxiliary)}"
        )
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks contains duplicates: {tasks}")
    return tasks
