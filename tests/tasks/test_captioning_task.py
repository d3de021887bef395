"""The captioning task on a fake model whose generations are known: what it hands the scorer
(one generation per video, every reference of the video) and how it scales the result."""

import pytest
import torch
from torch import nn

import meltr.tasks.captioning as captioning
from meltr.tasks.captioning import Captioning

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cat", "runs", "dog", "sits"]
IDS = {word: index for index, word in enumerate(WORDS)}
# video index -> the tokens the fake model generates for it (EOS, then padding)
GENERATED = {
    0: ["a", "red", "cat", "[SEP]", "[PAD]"],
    1: ["dog", "sits", "[SEP]", "[PAD]", "[PAD]"],
    2: ["a", "dog", "runs", "red", "cat"],  # no EOS within max_length
}


class FakeTokenizer:
    cls_id, sep_id, pad_id = IDS["[CLS]"], IDS["[SEP]"], IDS["[PAD]"]

    def decode(self, ids):
        return " ".join(WORDS[i] for i in ids if WORDS[i] not in ("[PAD]", "[CLS]", "[SEP]"))


class KnownGenerations(nn.Module):
    """``generate`` reads the video index from features[:, 0, 0] and returns its known tokens;
    it records the rows and arguments of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, *, mode, features, feature_mask, **arguments):
        assert mode == "generate"
        assert not self.training
        videos = features[:, 0, 0].long().tolist()
        self.calls.append((videos, arguments))
        tokens = [[IDS[word] for word in GENERATED[video]] for video in videos]
        return {"tokens": torch.tensor(tokens), "scores": torch.zeros(len(videos))}


def _batches(items, batch_size):
    """Evaluation batches of (video index, reference caption) items, as FeatureText yields them
    (one item per caption; a video's items are consecutive and may span batches)."""
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        yield {
            "features": torch.tensor([[[float(v), 0.0]] for v, _ in chunk]),
            "feature_mask": torch.ones(len(chunk), 1, dtype=torch.long),
            "transcript_ids": torch.tensor([[IDS["[CLS]"], 5 + v, IDS["[SEP]"]] for v, _ in chunk]),
            "transcript_mask": torch.ones(len(chunk), 3, dtype=torch.long),
            "caption": [caption for _, caption in chunk],
            "video_id": [f"video{v}" for v, _ in chunk],
            "num_corrupt": 1 if start == 0 else 0,
        }


ITEMS = [
    (0, "A red cat."),
    (0, "a cat that is red"),
    (0, "the red cat"),
    (1, "A dog sits"),
    (1, "dog sitting"),
    (2, "a dog runs after a red cat"),
]


@pytest.mark.parametrize("transcript", [False, True])
def test_one_generation_per_video_against_all_its_references(monkeypatch, transcript):
    received = []

    def recording_scores(predictions, references):
        received.append((predictions, references))
        return {"BLEU-3": 0.25, "BLEU-4": 0.125, "METEOR": 0.5, "ROUGE-L": 0.75, "CIDEr": 1.5}

    monkeypatch.setattr(captioning, "caption_scores", recording_scores)
    model = KnownGenerations().train()
    keys = ("transcript_ids", "transcript_mask") if transcript else None
    task = Captioning(FakeTokenizer(), transcript_keys=keys, max_length=5, beam_size=3)
    metrics = task.evaluate(model, lambda view: _batches(ITEMS, 4), torch.device("cpu"), "val")

    assert received == [
        (
            {"video0": "a red cat", "video1": "dog sits", "video2": "a dog runs red cat"},
            {
                "video0": ["A red cat.", "a cat that is red", "the red cat"],
                "video1": ["A dog sits", "dog sitting"],
                "video2": ["a dog runs after a red cat"],
            },
        )
    ]
    # Batch 1 holds videos 0 and 1, batch 2 the rest of video 1 and video 2: each video is
    # generated once, from its first item.
    assert [videos for videos, _ in model.calls] == [[0, 1], [2]]
    for _, arguments in model.calls:
        assert arguments["bos_id"] == IDS["[CLS]"] and arguments["eos_id"] == IDS["[SEP]"]
        assert arguments["pad_id"] == IDS["[PAD]"]
        assert arguments["max_length"] == 5 and arguments["beam_size"] == 3
        assert ("text_ids" in arguments) == transcript
    if transcript:
        assert model.calls[1][1]["text_ids"].tolist() == [[IDS["[CLS]"], 7, IDS["[SEP]"]]]
    assert metrics == {
        "val/BLEU-3": 25.0,
        "val/BLEU-4": 12.5,
        "val/METEOR": 50.0,
        "val/ROUGE-L": 75.0,
        "val/CIDEr": 150.0,
        "val/num_references": 6.0,
        "val/num_items": 3.0,
        "val/num_corrupt": 1.0,
    }
    assert model.training  # restored


def test_options_are_checked():
    with pytest.raises(ValueError, match="max_length"):
        Captioning(FakeTokenizer(), max_length=0)
    with pytest.raises(ValueError, match="transcript_keys"):
        Captioning(FakeTokenizer(), transcript_keys=("transcript_ids",))
    task = Captioning(FakeTokenizer())
    with pytest.raises(ValueError, match="cannot average"):
        task.evaluate(KnownGenerations(), lambda view: [], torch.device("cpu"), "test", views=2)
    with pytest.raises(ValueError, match="empty"):
        task.evaluate(KnownGenerations(), lambda view: [], torch.device("cpu"), "test")
    assert (task.selection_metric, task.higher_is_better) == ("CIDEr", True)
