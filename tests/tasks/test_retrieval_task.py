import numpy as np
import pytest
import torch
from torch import nn

from meltr.tasks.retrieval import Retrieval

DIM = 6


class LookupModel(nn.Module):
    """Features are the rows of fixed tables, indexed by text_ids[:, 0] and video[:, 0, 0, 0, 0]."""

    def __init__(self, text_table, video_tables):
        super().__init__()
        self.text_table, self.video_tables = text_table, video_tables

    def forward(self, *, mode, text_ids=None, text_mask=None, video=None, text=None):
        if mode == "text":
            return {"text_feat": self.text_table[text_ids[:, 0]]}
        if mode == "score":  # a "cross encoder" that scores every pair of the given rows
            return {"scores": text["text_feat"] @ video["video_feat"].T}
        view, index = video[:, 0, 0, 0, 0].long() // 100, video[:, 0, 0, 0, 0].long() % 100
        return {"video_feat": self.video_tables[view[0]][index]}


def _batches(captions_of, view):
    """Test batches of 2 items: caption t of video v is an item (text id t, video v of `view`)."""
    items = [(t, v) for v, texts in enumerate(captions_of) for t in texts]
    for start in range(0, len(items), 2):
        chunk = items[start : start + 2]
        yield {
            "text_ids": torch.tensor([[t, 0] for t, _ in chunk]),
            "text_mask": torch.ones(len(chunk), 2, dtype=torch.long),
            "video": torch.stack([torch.full((1, 1, 1, 1), 100.0 * view + v) for _, v in chunk]),
            "video_id": [f"video{v}" for _, v in chunk],
        }


def _reference_metrics(similarity, text_to_video):
    """Ranks counted directly: 1 + number of wrong candidates scoring higher than the right one."""
    num_texts, num_videos = similarity.shape
    t2v = [
        1 + sum(similarity[i, j] > similarity[i, text_to_video[i]] for j in range(num_videos))
        for i in range(num_texts)
    ]
    v2t = []
    for v in range(num_videos):
        right = [i for i in range(num_texts) if text_to_video[i] == v]
        best = max(similarity[i, v] for i in right)
        v2t.append(1 + sum(similarity[i, v] > best for i in range(num_texts) if i not in right))
    metrics = {}
    for name, ranks in (("t2v", np.array(t2v)), ("v2t", np.array(v2t))):
        for k in (1, 5, 10):
            metrics[f"test/{name}_R@{k}"] = 100.0 * np.mean(ranks <= k)
        metrics[f"test/{name}_MedR"] = float(np.median(ranks))
        metrics[f"test/{name}_MnR"] = float(np.mean(ranks))
    return metrics


@pytest.mark.parametrize("scoring", ["dual", "cross"])
@pytest.mark.parametrize("views", [1, 3])
def test_metrics_match_direct_rank_counting(views, scoring):
    generator = torch.Generator().manual_seed(0)
    captions_of = [[0, 1], [2], [3], [4, 5, 6], [7], [8], [9], [10], [11], [12], [13], [14]]
    num_videos, num_texts = len(captions_of), 15
    text_table = nn.functional.normalize(torch.randn(num_texts, DIM, generator=generator), dim=1)
    video_tables = nn.functional.normalize(
        torch.randn(3, num_videos, DIM, generator=generator), dim=2
    )
    model = LookupModel(text_table, video_tables)
    view_ids = [0] if views == 1 else list(range(views))

    task = Retrieval(scoring=scoring, score_block=4)  # blocks smaller than the split
    metrics = task.evaluate(
        model, lambda view: _batches(captions_of, view or 0), torch.device("cpu"), "test", views
    )

    similarity = sum(text_table @ video_tables[k].T for k in view_ids) / len(view_ids)
    text_to_video = [v for v, texts in enumerate(captions_of) for _ in texts]
    counts = {"test/num_items": 15, "test/num_videos": 12, "test/num_corrupt": 0}
    expected = _reference_metrics(similarity.numpy(), text_to_video) | counts
    assert metrics == pytest.approx(expected)
