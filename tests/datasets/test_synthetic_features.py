"""The generated feature dataset of the quick UniVL recipe: deterministic, its features carry what
its captions say (recovered here by nearest prototypes), its vocabulary covers every word."""

import json

import numpy as np
import pytest

from meltr.data.synthetic.cooking_features import (
    ACTIONS,
    INGREDIENTS,
    PLACES,
    SPEEDS,
    FeatureClipDescription,
    attribute_prototypes,
    generate_synthetic_features,
    materialise_feature_clip,
)
from meltr.data.text import WordPieceTokenizer

DIM = 32


def clip(index: int, split: str = "test", captions: int = 3, seed: int = 0) -> dict:
    description = FeatureClipDescription(
        key=f"k{index}",
        split=split,
        index=index,
        seed=seed,
        feature_dim=DIM,
        min_frames=4,
        max_frames=12,
        noise=1.0,
        num_captions=captions,
    )
    return materialise_feature_clip(description)


def stated(caption: str) -> dict[str, str]:
    """The attributes a caption names, read from its words."""
    words = caption.split()
    verbs = {form: action for action, forms in ACTIONS.items() for verb in forms for form in verb}
    phrases = {p: place for place, (phrases, _) in PLACES.items() for p in phrases}
    return {
        "action": next(verbs[w] for w in words if w in verbs),
        "ingredient": next(w for w in words if w in INGREDIENTS),
        "place": next(place for p, place in phrases.items() if p in caption),
        "speed": next(s for s, options in SPEEDS.items() if any(w in options for w in words)),
    }


def test_clips_are_deterministic_and_distinct():
    first, again, other = clip(3), clip(3), clip(4)
    np.testing.assert_array_equal(first["features.npy"], again["features.npy"])
    assert first["json"] == again["json"]
    assert first["json"]["captions"] != other["json"]["captions"]
    assert len(set(first["json"]["captions"])) == 3
    assert not np.array_equal(clip(3, seed=1)["features.npy"][:1], first["features.npy"][:1])


def test_features_encode_the_attributes_the_captions_name():
    prototypes = attribute_prototypes(0, DIM)
    hits = {"action": 0, "ingredient": 0, "place": 0, "speed": 0}
    count = 48
    for index in range(count):
        sample = clip(index)
        truth = [stated(c) for c in sample["json"]["captions"]]
        assert all(t == truth[0] for t in truth)  # every reference names the same step
        assert truth[0]["ingredient"] in sample["json"]["transcript"]
        mean = sample["features.npy"].mean(axis=0)
        for attribute in hits:
            names = [n for n in prototypes if n.startswith(attribute + ":")]
            best = max(names, key=lambda n: float(mean @ prototypes[n]))
            hits[attribute] += best == f"{attribute}:{truth[0][attribute]}"
    # Noisy but recoverable: the mean frame's best-matching prototype names the captioned
    # attribute far above chance (1/6 .. 1/2), the action least often (it spans part of the clip).
    assert all(h >= 0.75 * count for h in hits.values()), hits


def test_dataset_splits_vocabulary_and_manifest(tmp_path):
    root = tmp_path / "features"
    paths = generate_synthetic_features(
        root, num_train=12, num_val=4, num_test=5, samples_per_shard=8, references_per_eval_video=2
    )
    assert [len(paths[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    tokenizer = WordPieceTokenizer(paths["vocab"], max_length=16)
    texts = []
    for split, count in (("train", 12), ("val", 4), ("test", 5)):
        for index in range(count):
            record = clip(index, split, captions=4 if split == "train" else 2)["json"]
            texts += record["captions"] + [record["transcript"]]
    ids, mask = tokenizer.encode(texts)
    assert not (ids == tokenizer.unk_id).any()
    # Whole words: one token per word, so a caption fits MAX_WORDS = 16 with [CLS] and [SEP].
    assert mask.sum(dim=1).tolist() == [len(t.split()) + 2 for t in texts]
    shard_times = {p: (root / p).stat().st_mtime_ns for p in map(str, paths["train"])}
    assert (
        generate_synthetic_features(
            root,
            num_train=12,
            num_val=4,
            num_test=5,
            samples_per_shard=8,
            references_per_eval_video=2,
        )
        == paths
    )
    assert {p: (root / p).stat().st_mtime_ns for p in shard_times} == shard_times
    assert json.loads((root / "manifest.json").read_text())["arguments"]["num_val"] == 4
    with pytest.raises(ValueError, match="holds another dataset"):
        generate_synthetic_features(root, num_train=13, num_val=4, num_test=5, samples_per_shard=8)
    with pytest.raises(ValueError, match="max_frames"):
        generate_synthetic_features(tmp_path / "bad", min_frames=5, max_frames=4)
