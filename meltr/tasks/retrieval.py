"""Text-video retrieval evaluation over a whole test split, with optional multi-view averaging."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from meltr.metrics.retrieval import retrieval_metrics
from meltr.train.distributed import all_gather_objects


@torch.no_grad()
def encode_test_split(
    model: nn.Module, batches: Iterable[Mapping], device: torch.device
) -> tuple[Tensor, Tensor, list[int]]:
    """Embed every caption and every distinct video of one pass over the test split.

    Returns ``text_feat [num_texts, P]``, ``video_feat [num_videos, P]`` (videos in order of first
    appearance, deduplicated by ``video_id``) and ``text_to_video`` (the video index of each
    caption). Uses the model's ``mode="text"`` and ``mode="video"`` forwards. In a distributed run
    ``batches`` is this rank's share of the split (possibly empty); the shares of all ranks are
    gathered, in rank order, so every rank returns the whole split.
    """
    shares = all_gather_objects(_encode_share(model, batches, device))
    texts = [share for share in shares if share[0] is not None]
    if not texts:
        raise ValueError("the test split is empty: the evaluation loader yielded no batch")
    video_index: dict[str, int] = {}
    video_feats = []
    for _, video_feat, _, video_ids in texts:
        new_rows = [row for row, video_id in enumerate(video_ids) if video_id not in video_index]
        for row in new_rows:
            video_index[video_ids[row]] = len(video_index)
        video_feats.append(video_feat[new_rows])
    text_to_video = [video_index[video_id] for share in texts for video_id in share[2]]
    return torch.cat([share[0] for share in texts]), torch.cat(video_feats), text_to_video


def _encode_share(
    model: nn.Module, batches: Iterable[Mapping], device: torch.device
) -> tuple[Tensor | None, Tensor | None, list[str], list[str]]:
    """(text_feat, video_feat of the distinct videos, each caption's video id, the distinct video
    ids in order of first appearance) of ``batches``; the features are None when it is empty."""
    text_feats, video_feats, caption_videos = [], [], []
    video_ids: dict[str, None] = {}
    for batch in batches:
        text = model(
            mode="text",
            text_ids=batch["text_ids"].to(device),
            text_mask=batch["text_mask"].to(device),
        )["text_feat"]
        text_feats.append(text.float().cpu())
        new_rows = []
        for row, video_id in enumerate(batch["video_id"]):
            if video_id not in video_ids:
                video_ids[video_id] = None
                new_rows.append(row)
            caption_videos.append(video_id)
        if new_rows:
            video = batch["video"][new_rows].to(device)
            video_feats.append(model(mode="video", video=video)["video_feat"].float().cpu())
    if not text_feats:
        return None, None, [], []
    return torch.cat(text_feats), torch.cat(video_feats), caption_videos, list(video_ids)


def evaluate_retrieval(
    model: nn.Module,
    make_loader: Callable[[int | None], Iterable[Mapping]],
    device: torch.device,
    views: int = 1,
) -> dict[str, float]:
    """Retrieval metrics of ``model`` on the test split: ``test/t2v_R@1`` ... ``test/v2t_MnR``.

    ``make_loader(view)`` returns a fresh pass over the test split: ``view=None`` for the single
    deterministic view (segment-centre frames), ``view=k`` for the k-th random-frame view. With
    ``views > 1`` the text-video cosine similarities of the views are averaged (the All-in-one
    release's protocol). The model is put in eval mode and restored to its previous mode.
    """
    if views < 1:
        raise ValueError(f"views must be >= 1, got {views}")
    was_training = model.training
    model.eval()
    try:
        view_ids = [None] if views == 1 else list(range(views))
        similarity, text_to_video, video_count = None, None, None
        for view in view_ids:
            text_feat, video_feat, mapping = encode_test_split(model, make_loader(view), device)
            if similarity is None:
                similarity, text_to_video, video_count = (
                    text_feat @ video_feat.T,
                    mapping,
                    len(video_feat),
                )
            elif mapping != text_to_video or len(video_feat) != video_count:
                raise ValueError(f"view {view} of the test split differs in its captions or videos")
            else:
                similarity += text_feat @ video_feat.T
        similarity /= len(view_ids)
    finally:
        model.train(was_training)
    metrics = retrieval_metrics(similarity, torch.tensor(text_to_video))
    return {f"test/{name}": float(value) for name, value in metrics.items()}
