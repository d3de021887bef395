import pytest
import torch

from meltr.backbones.univl import UniVLDecoderInputs, UniVLMasking
from meltr.data.text import WordPieceTokenizer

# Special tokens deliberately not at BERT's ids.
WORDS = [
    "the",
    "[UNK]",
    "a",
    "[SEP]",
    "cafe",
    "is",
    "[PAD]",
    "run",
    "dog",
    "[CLS]",
    "man",
    "[MASK]",
]
WORDS += [f"word{i}" for i in range(20)]


@pytest.fixture
def tokenizer(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    return WordPieceTokenizer(path, max_length=24)


def item_of(tokenizer, text="the dog is a man", frames=6, total_frames=8, seed=0):
    ids, mask = tokenizer.encode([text])
    features = torch.zeros(total_frames, 4)
    features[:frames] = torch.randn(frames, 4, generator=torch.Generator().manual_seed(seed)) + 3.0
    return {
        "text_ids": ids[0],
        "text_mask": mask[0],
        "features": features,
        "feature_mask": (torch.arange(total_frames) < frames).long(),
        "video_id": "v0",
    }


def test_specials_never_masked_at_least_one_token_and_frame(tokenizer):
    item = item_of(tokenizer, "the [UNK] dog is the man a cafe", frames=3)
    masking = UniVLMasking(tokenizer=tokenizer)
    specials = torch.tensor(sorted(tokenizer.special_ids))
    is_special = torch.isin(item["text_ids"], specials) | ~item["text_mask"].bool()
    for seed in range(300):
        out = masking(item, torch.Generator().manual_seed(seed))
        labels = out["mlm_labels"]
        assert labels[is_special].eq(-100).all()
        assert torch.equal(out["mlm_ids"][is_special], item["text_ids"][is_special])
        selected = labels != -100
        assert selected.any()
        assert torch.equal(labels[selected], item["text_ids"][selected])
        assert torch.equal(out["mlm_ids"][~selected], item["text_ids"][~selected])
        frame_labels = out["frame_mask_labels"]
        zeroed = frame_labels != -100
        assert zeroed.any() and not zeroed[3:].any()
        assert torch.equal(frame_labels[zeroed], torch.arange(8)[zeroed])
        assert out["masked_features"][zeroed].eq(0).all()
        assert torch.equal(out["masked_features"][~zeroed], item["features"][~zeroed])


def test_selection_and_replacement_rates(tokenizer):
    """Per token P(selected | at least one selected) = p / (1 - (1 - p)^n); of the selected,
    80 % [MASK], 10 % a random non-special token, 10 % unchanged. Frames likewise."""
    n, frames, p = 10, 6, 0.15
    item = item_of(tokenizer, " ".join(f"word{i}" for i in range(n)), frames=frames)
    masking = UniVLMasking(tokenizer=tokenizer)
    draws = 3000
    counts = dict(selected=0, masked=0, changed=0, zeroed=0)
    for seed in range(draws):
        out = masking(item, torch.Generator().manual_seed(seed))
        selected = out["mlm_labels"] != -100
        counts["selected"] += int(selected.sum())
        counts["masked"] += int((out["mlm_ids"][selected] == tokenizer.mask_id).sum())
        changed = (out["mlm_ids"] != item["text_ids"]) & (out["mlm_ids"] != tokenizer.mask_id)
        counts["changed"] += int(changed.sum())
        counts["zeroed"] += int((out["frame_mask_labels"] != -100).sum())
        assert not torch.isin(
            out["mlm_ids"][changed], torch.tensor(sorted(tokenizer.special_ids))
        ).any()
    rate = counts["selected"] / (draws * n)
    assert rate == pytest.approx(p / (1 - (1 - p) ** n), abs=0.01)
    assert counts["masked"] / counts["selected"] == pytest.approx(0.8, abs=0.03)
    ordinary = tokenizer.vocab_size - len(tokenizer.special_ids)
    expected_changed = 0.1 * (1 - 1 / ordinary)
    assert counts["changed"] / counts["selected"] == pytest.approx(expected_changed, abs=0.02)
    frame_rate = counts["zeroed"] / (draws * frames)
    assert frame_rate == pytest.approx(p / (1 - (1 - p) ** frames), abs=0.01)


def test_deterministic_given_the_generator_and_input_untouched(tokenizer):
    item = item_of(tokenizer)
    original = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in item.items()}
    masking = UniVLMasking(tokenizer=tokenizer, probability=0.5, frame_probability=0.5)
    first = masking(item, torch.Generator().manual_seed(3))
    second = masking(item, torch.Generator().manual_seed(3))
    other = [masking(item, torch.Generator().manual_seed(s)) for s in range(4, 9)]
    for key in ("mlm_ids", "mlm_labels", "masked_features", "frame_mask_labels"):
        assert torch.equal(first[key], second[key])
    assert any(not torch.equal(first["mlm_labels"], o["mlm_labels"]) for o in other)
    assert any(not torch.equal(first["frame_mask_labels"], o["frame_mask_labels"]) for o in other)
    assert all(
        torch.equal(item[k], v) if isinstance(v, torch.Tensor) else item[k] == v
        for k, v in original.items()
    )
    assert set(first) == set(item) | {
        "mlm_ids",
        "mlm_labels",
        "masked_features",
        "frame_mask_labels",
    }


def test_nothing_to_mask_terminates(tokenizer):
    item = item_of(tokenizer, "[UNK]", frames=0)
    out = UniVLMasking(tokenizer=tokenizer)(item, torch.Generator().manual_seed(0))
    assert out["mlm_labels"].eq(-100).all() and out["frame_mask_labels"].eq(-100).all()
    assert torch.equal(out["masked_features"], item["features"])


def test_the_transcript_can_be_masked(tokenizer):
    item = item_of(tokenizer)
    ids, mask = tokenizer.encode(["a cafe run"])
    item.update(transcript_ids=ids[0, :10], transcript_mask=mask[0, :10])
    masking = UniVLMasking(tokenizer=tokenizer, text_keys=("transcript_ids", "transcript_mask"))
    out = masking(item, torch.Generator().manual_seed(0))
    assert out["mlm_ids"].shape == (10,)
    selected = out["mlm_labels"] != -100
    assert torch.equal(out["mlm_labels"][selected], item["transcript_ids"][selected])


def test_bad_arguments(tokenizer):
    with pytest.raises(ValueError, match="probability must be in"):
        UniVLMasking(tokenizer=tokenizer, probability=0.0)
    with pytest.raises(KeyError, match="transcript_ids"):
        UniVLMasking(tokenizer=tokenizer, text_keys=("transcript_ids", "transcript_mask"))(
            item_of(tokenizer), torch.Generator()
        )


def test_decoder_inputs_with_a_real_tokenizer(tokenizer):
    item = item_of(tokenizer, "the dog is")
    out = UniVLDecoderInputs(tokenizer=tokenizer)(item, torch.Generator())
    ids = tokenizer.encode(["the dog is"])[0][0].tolist()
    cls, sep, pad = tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id
    words = ids[1:4]
    assert ids[:5] == [cls, *words, sep]
    assert out["decoder_ids"].tolist() == [cls, *words] + [pad] * 20
    assert out["decoder_targets"].tolist() == [*words, sep] + [pad] * 20
    assert out["decoder_mask"].tolist() == [1] * 4 + [0] * 20
    broken = dict(item, text_ids=item["text_ids"].masked_fill(item["text_ids"] == sep, pad))
    with pytest.raises(ValueError, match="'v0'.*must be \\[CLS\\] ... \\[SEP\\]"):
        UniVLDecoderInputs(tokenizer=tokenizer)(broken, torch.Generator())
