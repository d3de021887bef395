"""Text-to-video and video-to-text retrieval metrics from a similarity matrix."""

from __future__ import annotations

import torch
from torch import Tensor

RECALL_AT = (1, 5, 10)


def retrieval_metrics(similarity: Tensor, text_to_video: Tensor) -> dict[str, float]:
    """Recall@{1,5,10} (percent), median and mean rank for both retrieval directions.

    ``similarity`` is ``[num_texts, num_videos]`` (higher = more similar); ``text_to_video[i]``
    is the index of text ``i``'s video. Ranks are 1-based: the rank of a query is
    ``1 + (number of wrong candidates scoring >= the best correct candidate)``, so ties are
    broken pessimistically. Text-to-video has one correct video per text; video-to-text uses
    the best-ranked of the video's texts and only counts videos that have at least one text.

    Keys: ``t2v_R@1, t2v_R@5, t2v_R@10, t2v_MedR, t2v_MnR`` and the same with ``v2t_``.
    """
    similarity, text_to_video = _validate(similarity, text_to_video)
    num_texts, num_videos = similarity.shape
    is_correct = torch.zeros(num_texts, num_videos, dtype=torch.bool)
    is_correct[torch.arange(num_texts), text_to_video] = True

    t2v_ranks = _best_correct_ranks(similarity, is_correct)
    has_text = is_correct.any(dim=0)
    v2t_ranks = _best_correct_ranks(similarity.T[has_text], is_correct.T[has_text])
    return {**_summarise("t2v", t2v_ranks), **_summarise("v2t", v2t_ranks)}


def _best_correct_ranks(scores: Tensor, is_correct: Tensor) -> Tensor:
    """Per query row: 1 + number of wrong candidates scoring >= the best correct score."""
    best_correct = scores.masked_fill(~is_correct, float("-inf")).max(dim=1, keepdim=True).values
    beaten_or_tied = (scores >= best_correct) & ~is_correct
    return beaten_or_tied.sum(dim=1) + 1


def _summarise(prefix: str, ranks: Tensor) -> dict[str, float]:
    ranks = ranks.double()
    metrics = {f"{prefix}_R@{k}": 100.0 * (ranks <= k).double().mean().item() for k in RECALL_AT}
    ordered = ranks.sort().values
    middle = (len(ordered) - 1) // 2
    metrics[f"{prefix}_MedR"] = ((ordered[middle] + ordered[len(ordered) // 2]) / 2).item()
    metrics[f"{prefix}_MnR"] = ranks.mean().item()
    return metrics


def _validate(similarity: Tensor, text_to_video: Tensor) -> tuple[Tensor, Tensor]:
    similarity = torch.as_tensor(similarity).detach().cpu().double()
    text_to_video = torch.as_tensor(text_to_video).detach().cpu()
    if similarity.dim() != 2 or 0 in similarity.shape:
        raise ValueError(
            f"similarity must be a non-empty [num_texts, num_videos] matrix, got shape "
            f"{tuple(similarity.shape)}"
        )
    if torch.isnan(similarity).any():
        raise ValueError("similarity contains NaN")
    if text_to_video.shape != (similarity.shape[0],) or text_to_video.is_floating_point():
        raise ValueError(
            f"text_to_video must be an integer vector of length num_texts={similarity.shape[0]}, "
            f"got {text_to_video.dtype} of shape {tuple(text_to_video.shape)}"
        )
    out_of_range = (text_to_video < 0) | (text_to_video >= similarity.shape[1])
    if out_of_range.any():
        raise ValueError(
            f"text_to_video holds video indices outside [0, {similarity.shape[1]}): "
            f"{text_to_video[out_of_range][:5].tolist()}"
        )
    return similarity, text_to_video.long()
