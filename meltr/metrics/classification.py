"""Top-k classification accuracy and open-ended QA answer accuracy (percent)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

OUT_OF_VOCABULARY = -1


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percent of samples whose label is among the ``k`` highest logits, for each ``k`` in ``ks``.

    ``logits`` is ``[N, C]`` (scores, higher = more likely; probabilities work alike), ``labels``
    ``[N]`` integer classes in ``[0, C)``. Returns ``{"top1": %, "top5": %}`` for the default
    ``ks``.
    The top ``k`` are the indices ``torch.topk(logits, k)`` returns: when the label ties with the
    k-th highest score, whether it counts depends on which of the tied classes ``torch.topk``
    picks (torch does not specify it); untied labels are unaffected.
    """
    logits = torch.as_tensor(logits).detach().cpu()
    if logits.dim() != 2 or 0 in logits.shape or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a non-empty floating [N, C] matrix, got {logits.dtype} of shape "
            f"{tuple(logits.shape)}"
        )
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN")
    num_samples, num_classes = logits.shape
    labels = _integer_vector("labels", labels, num_samples, f"logits {tuple(logits.shape)}")
    out_of_range = (labels < 0) | (labels >= num_classes)
    if out_of_range.any():
        raise ValueError(
            f"labels hold classes outside [0, {num_classes}): {labels[out_of_range][:5].tolist()}"
        )
    bad_ks = [
        k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes
    ]
    if not ks or bad_ks:
        raise ValueError(f"ks must be integers in [1, C={num_classes}], got {tuple(ks)}")
    accuracies = {}
    for k in ks:
        top_k = logits.topk(k, dim=1).indices
        hit = (top_k == labels[:, None]).any(dim=1)
        accuracies[f"top{k}"] = 100.0 * hit.double().mean().item()
    return accuracies


def answer_accuracy(predicted: Tensor, answer_index: Tensor) -> dict[str, float | int]:
    """Open-ended QA accuracy over all questions, in percent.

    ``predicted`` ``[N]`` holds the predicted answer-vocabulary indices (>= 0), ``answer_index``
    ``[N]`` the true answers' indices, ``-1`` where the true answer is outside the answer
    vocabulary: such a question counts as wrong (the model cannot produce it) and stays in the
    denominator. Returns ``{"accuracy": %, "num_out_of_vocabulary": int}``.
    """
    predicted = _integer_vector("predicted", predicted)
    answer_index = _integer_vector(
        "answer_index", answer_index, len(predicted), f"predicted {tuple(predicted.shape)}"
    )
    if len(predicted) == 0:
        raise ValueError("predicted is empty: no question to score")
    if (predicted < 0).any():
        raise ValueError(
            f"predicted holds negative answer indices: {predicted[predicted < 0][:5].tolist()}"
        )
    if (answer_index < OUT_OF_VOCABULARY).any():
        below = answer_index[answer_index < OUT_OF_VOCABULARY]
        raise ValueError(
            f"answer_index must be >= 0, or -1 for an answer outside the vocabulary; got "
            f"{below[:5].tolist()}"
        )
    correct = predicted == answer_index
    return {
        "accuracy": 100.0 * correct.double().mean().item(),
        "num_out_of_vocabulary": int((answer_index == OUT_OF_VOCABULARY).sum()),
    }


def _integer_vector(
    name: str, values: Tensor, length: int | None = None, paired_with: str = ""
) -> Tensor:
    """``values`` as a 1-D int64 CPU tensor; ``length`` (if given) must match ``paired_with``."""
    values = torch.as_tensor(values).detach().cpu()
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer indices, got {values.dtype}")
    if values.dim() != 1 or (length is not None and len(values) != length):
        expected = f"[{length}] to match {paired_with}" if length is not None else "[N]"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(values.shape)}")
    return values.long()
