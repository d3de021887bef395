"""The sentiment task on a fake model whose predictions are known."""

import pytest
import torch
from torch import nn

from meltr.metrics.sentiment import sentiment_metrics
from meltr.tasks.sentiment import Sentiment

PREDICTIONS = torch.tensor([1.2, -0.4, 0.0, 2.9, -2.2, 0.6, -0.1])
LABELS = torch.tensor([1.0, -1.4, 0.2, 3.0, -1.8, -0.6, 0.0])


class KnownPredictions(nn.Module):
    """text -> the item index (text_ids[:, 0]); video -> the same index (features[:, 0, 0]);
    regress -> PREDICTIONS[index], checking that text and video rows are paired."""

    def forward(self, *, mode, **inputs):
        if mode == "text":
            return {
                "text_hidden": inputs["text_ids"][:, :1].float(),
                "text_mask": inputs["text_mask"],
            }
        if mode == "video":
            return {
                "video_hidden": inputs["features"][:, :1, 0],
                "feature_mask": inputs["feature_mask"],
            }
        assert mode == "regress"
        index = inputs["text"]["text_hidden"][:, 0].long()
        assert torch.equal(index, inputs["video"]["video_hidden"][:, 0].long())
        return {"prediction": PREDICTIONS[index]}


def _batches(batch_size):
    for start in range(0, len(LABELS), batch_size):
        index = torch.arange(start, min(start + batch_size, len(LABELS)))
        yield {
            "text_ids": index[:, None].repeat(1, 3),
            "text_mask": torch.ones(len(index), 3, dtype=torch.long),
            "features": index[:, None, None].float().repeat(1, 2, 4),
            "feature_mask": torch.ones(len(index), 2, dtype=torch.long),
            "label": LABELS[index],
            "num_corrupt": 0,
        }


def test_metrics_are_those_of_the_known_predictions():
    task = Sentiment()
    metrics = task.evaluate(
        KnownPredictions(), lambda view: _batches(3), torch.device("cpu"), "test"
    )
    expected = sentiment_metrics(PREDICTIONS, LABELS)
    assert metrics == {f"test/{k}": v for k, v in expected.items()} | {
        "test/num_items": 7.0,
        "test/num_corrupt": 0.0,
    }
    assert metrics["test/mae"] == pytest.approx((PREDICTIONS - LABELS).abs().mean().item())
    assert (task.selection_metric, task.higher_is_better) == ("mae", False)
    with pytest.raises(ValueError, match="cannot average"):
        task.evaluate(KnownPredictions(), lambda view: _batches(3), torch.device("cpu"), "test", 2)
