"""Text-to-video retrieval over a whole split, with optional multi-view averaging.

The model is reached through ``forward(mode=...)`` only (docs/ARCHITECTURE.md, "Tasks"):
``model(mode="text", **text inputs)`` and ``model(mode="video", **video inputs)`` return dicts of
per-row outputs; with ``scoring="dual"`` the similarity is ``text_feat @ video_feat.T``, with
``scoring="cross"`` it is ``model(mode="score", text=rows, video=rows)["scores"]`` over every pair
(a cross encoder, as UniVL and Violet evaluate).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from meltr.metrics.retrieval import retrieval_metrics
from meltr.ranks import is_data_parallel
from meltr.tasks.common import (
    ItemCounts,
    all_gather_objects,
    check_views,
    eval_mode,
    to_device,
)

Rows = dict[str, Tensor]


def _cat_rows(parts: list[Rows]) -> Rows:
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _take(rows: Rows, index: Any) -> Rows:
    return {key: value[index] for key, value in rows.items()}


def _cpu(rows: Mapping[str, Tensor]) -> Rows:
    return {
        key: value.detach().float().cpu() if value.is_floating_point() else value.cpu()
        for key, value in rows.items()
    }


class Retrieval:
    """Text-to-video retrieval: R@1/5/10 (percent), MedR and MnR in both directions.

    text_keys / video_keys: the batch keys fed to ``mode="text"`` / ``mode="video"``; videos are
    deduplicated by ``video_id``. scoring: ``"dual"`` (dot product of ``text_feat`` and
    ``video_feat``) or ``"cross"`` (``mode="score"`` on blocks of ``score_block`` texts by
    ``score_block`` videos). Selects on ``t2v_R@1``, higher is better.
    """

    selection_metric = "t2v_R@1"
    higher_is_better = True

    def __init__(
        self,
        text_keys: tuple[str, ...] = ("text_ids", "text_mask"),
        video_keys: tuple[str, ...] = ("video",),
        scoring: str = "dual",
        score_block: int = 64,
    ) -> None:
        if scoring not in ("dual", "cross"):
            raise ValueError(f"scoring must be 'dual' or 'cross', got {scoring!r}")
        if not isinstance(score_block, int) or score_block < 1:
            raise ValueError(f"score_block must be an integer >= 1, got {score_block!r}")
        self.text_keys, self.video_keys = tuple(text_keys), tuple(video_keys)
        self.scoring, self.score_block = scoring, score_block

    @torch.no_grad()
    def _encode(
        self, model: nn.Module, batches: Iterable[Mapping], device: torch.device
    ) -> tuple[Rows | None, Rows | None, list[str], list[str], ItemCounts]:
        """This rank's text rows, the rows of its distinct videos (in order of first appearance),
        each caption's video id and the distinct video ids."""
        texts, videos, caption_videos = [], [], []
        video_ids: dict[str, None] = {}
        counts = ItemCounts()
        for batch in batches:
            counts.add(batch, "video_id")
            texts.append(_cpu(model(mode="text", **to_device(batch, self.text_keys, device))))
            new_rows = []
            for row, video_id in enumerate(batch["video_id"]):
                if video_id not in video_ids:
                    video_ids[video_id] = None
                    new_rows.append(row)
                caption_videos.append(video_id)
            if new_rows:
                inputs = to_device(batch, self.video_keys, device)
                inputs = {key: value[new_rows] for key, value in inputs.items()}
                videos.append(_cpu(model(mode="video", **inputs)))
        if not texts:
            return None, None, [], [], counts
        return _cat_rows(texts), _cat_rows(videos), caption_videos, list(video_ids), counts

    def _split_rows(
        self, model: nn.Module, batches: Iterable[Mapping], device: torch.device
    ) -> tuple[Rows, Rows, list[int], ItemCounts]:
        """Every rank's rows gathered in rank order (every rank returns the whole split): text
        rows, distinct video rows, each text's video index."""
        texts, videos, caption_videos, video_ids, counts = self._encode(model, batches, device)
        shares = [s for s in all_gather_objects((texts, videos, caption_videos, video_ids)) if s[0]]
        if not shares:
            raise ValueError("the evaluation split is empty: its loader yielded no batch")
        index: dict[str, int] = {}
        video_parts = []
        for _, share_videos, _, share_ids in shares:
            new = [row for row, video_id in enumerate(share_ids) if video_id not in index]
            for row in new:
                index[share_ids[row]] = len(index)
            video_parts.append(_take(share_videos, new))
        text_to_video = [index[video_id] for share in shares for video_id in share[2]]
        return _cat_rows([s[0] for s in shares]), _cat_rows(video_parts), text_to_video, counts

    @torch.no_grad()
    def _similarity(self, model: nn.Module, texts: Rows, videos: Rows, device) -> Tensor:
        if self.scoring == "dual":
            return texts["text_feat"] @ videos["video_feat"].T
        num_texts = len(next(iter(texts.values())))
        num_videos = len(next(iter(videos.values())))
        rank, world = (
            (torch.distributed.get_rank(), torch.distributed.get_world_size())
            if is_data_parallel()
            else (0, 1)
        )
        starts = list(range(0, num_texts, self.score_block))[rank::world]
        rows = {}
        for start in starts:
            text = {k: v[start : start + self.score_block].to(device) for k, v in texts.items()}
            row = []
            for begin in range(0, num_videos, self.score_block):
                video = {
                    k: v[begin : begin + self.score_block].to(device) for k, v in videos.items()
                }
                row.append(model(mode="score", text=text, video=video)["scores"].float().cpu())
            rows[start] = torch.cat(row, dim=1)
        gathered = {
            start: row for share in all_gather_objects(rows) for start, row in share.items()
        }
        return torch.cat([gathered[start] for start in sorted(gathered)])

    def evaluate(
        self,
        model: nn.Module,
        batches: Callable[[int | None], Iterable[Mapping]],
        device: torch.device,
        split: str,
        views: int = 1,
    ) -> dict[str, float]:
        """``<split>/t2v_R@1`` ... ``<split>/v2t_MnR``, ``<split>/num_items`` (captions scored),
        ``<split>/num_videos`` and ``<split>/num_corrupt``.

        ``batches(view)`` is a fresh pass over the split: ``None`` the deterministic view,
        ``k`` the k-th random view. With ``views > 1`` the similarities of the views are
        averaged (the All-in-one release's protocol).
        """
        check_views(views, supports_views=True, task="retrieval")
        with eval_mode(model):
            similarity, mapping, counts = None, None, None
            for view in [None] if views == 1 else range(views):
                texts, videos, text_to_video, view_counts = self._split_rows(
                    model, batches(view), device
                )
                view_similarity = self._similarity(model, texts, videos, device)
                if similarity is None:
                    similarity, mapping, counts = view_similarity, text_to_video, view_counts
                elif text_to_video != mapping or view_similarity.shape != similarity.shape:
                    raise ValueError(f"view {view} of the split differs in its captions or videos")
                else:
                    similarity = similarity + view_similarity
            similarity = similarity / views
        metrics = retrieval_metrics(similarity, torch.tensor(mapping))
        result = {f"{split}/{name}": float(value) for name, value in metrics.items()}
        result[f"{split}/num_videos"] = float(similarity.shape[1])
        return result | counts.metrics(split)
