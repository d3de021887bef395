"""CMU-MOSI from the CMU-MultimodalSDK's .csd files (HDF5, written here in the SDK's layout):
the utterances read back from the shards against an alignment computed in the test by loops
over the intervals, the missing items, and the command line."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_feature_converters import read_back, run_cli

from meltr.data.converters.mosi import write_plan
from meltr.data.converters.mosi_sdk import plan_mosi_sdk
from meltr.data.converters.release_files import MissingItemsError

# (start, end, word) per video; "sp" marks a silence. Segments: [0, 2] and [2, 4] seconds.
WORDS = [
    (0.0, 0.5, "this"), (0.5, 0.9, "sp"), (0.9, 1.6, "movie"), (1.6, 2.0, "rocks"),
    (2.0, 2.7, "not"), (2.7, 3.1, "sp"), (3.1, 3.9, "boring"),
]  # fmt: skip
SEGMENTS = [(0.0, 2.0), (2.0, 4.0)]
FOLDS = {"train": ["vidA"], "valid": ["vidB"], "test": ["vidC", "vidD"]}  # vidD has no Facet


def write_csd(path: Path, root: str, data: dict) -> None:
    """The SDK's layout: /<root>/data/<video>/{features, intervals}, /<root>/metadata/<key>."""
    with h5py.File(path, "w") as file:
        group = file.create_group(root)
        for video, (intervals, features) in data.items():
            entry = group.require_group("data").create_group(video)
            entry.create_dataset("intervals", data=np.asarray(intervals, dtype=np.float64))
            entry.create_dataset("features", data=features)
        metadata = group.create_group("metadata")
        for key, value in {"root name": root, "dimension names": []}.items():
            dataset = metadata.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
            dataset[0] = json.dumps(value)


def frames(step: float, count: int, dim: int, rng) -> tuple[np.ndarray, np.ndarray]:
    intervals = np.array([[k * step, (k + 1) * step] for k in range(count)])
    return intervals, rng.standard_normal((count, dim))


def make_sdk(root: Path) -> dict:
    """Four videos (vidE is in no fold, vidD lacks Facet rows) and the folds file."""
    root.mkdir()
    rng = np.random.default_rng(5)
    videos = ["vidA", "vidB", "vidC", "vidD", "vidE"]
    labels = {v: (SEGMENTS, rng.uniform(-3, 3, size=(2, 1))) for v in videos}
    words = {
        v: ([w[:2] for w in WORDS], np.array([[w[2].encode()] for w in WORDS])) for v in videos
    }
    vision = {v: frames(0.3, 13, 3, rng) for v in videos if v != "vidD"}
    audio = {v: frames(0.25, 16, 2, rng) for v in videos}
    audio["vidA"][1][3, 1] = -np.inf  # COVAREP's -inf
    write_csd(root / "CMU_MOSI_Opinion_Labels.csd", "Opinion Segment Labels", labels)
    write_csd(root / "CMU_MOSI_TimestampedWords.csd", "words", words)
    write_csd(root / "CMU_MOSI_Visual_Facet_41.csd", "FACET_4.1", vision)
    write_csd(root / "CMU_MOSI_COVAREP.csd", "COVAREP", audio)
    (root / "folds.json").write_text(json.dumps(FOLDS))
    return {"labels": labels, "vision": vision, "audio": audio}


def overlapping(rows: tuple, start: float, end: float) -> list[int]:
    intervals, _ = rows
    return [k for k, (s, e) in enumerate(intervals) if min(e, end) - max(s, start) > 1e-5]


def expected_rows(rows: tuple, start: float, end: float, aligned: bool) -> np.ndarray:
    """Aligned: per spoken word of the segment, the mean of the rows overlapping the word.
    Non-finite values are zeroed after the alignment (a mean over a -inf is -inf, then 0), as
    MMSA zeroed the SDK-aligned arrays."""
    features = rows[1]
    if aligned:
        spoken = [w for w in WORDS if w[2] != "sp" and min(w[1], end) - max(w[0], start) > 1e-5]
        features = np.stack([features[overlapping(rows, s, e)].mean(axis=0) for s, e, _ in spoken])
    else:
        features = features[overlapping(rows, start, end)]
    return np.nan_to_num(features, neginf=0.0)


@pytest.mark.parametrize(
    ("layout", "features"), [("aligned_50", "vision+audio"), ("unaligned_50", "vision")]
)
def test_sdk_utterances_are_the_segments_aligned_as_the_sdk_aligns(tmp_path, layout, features):
    truth = make_sdk(tmp_path / "sdk")
    plan = plan_mosi_sdk(tmp_path / "sdk", tmp_path / "sdk" / "folds.json", layout, features)
    assert [str(m) for m in plan.missing] == ["vidD (test: not in CMU_MOSI_Visual_Facet_41.csd)"]
    result = write_plan(plan, tmp_path / "shards", skip_missing=True)
    aligned = layout == "aligned_50"
    assert result["feature_dim"] == (5 if aligned else 3)
    assert result["non_finite"] == (1 if aligned else 0)
    texts = ["this movie rocks", "not boring"]
    for fold, split in (("train", "train"), ("valid", "val"), ("test", "test")):
        samples = read_back(tmp_path / "shards", split)
        videos = [v for v in FOLDS[fold] if v != "vidD"]
        assert sorted(samples) == [f"{v}[{i}]" for v in videos for i in range(2)]
        for video in videos:
            for i, (start, end) in enumerate(SEGMENTS):
                sample = samples[f"{video}[{i}]"]
                expected = expected_rows(truth["vision"][video], start, end, aligned)
                if features == "vision+audio":
                    audio = expected_rows(truth["audio"][video], start, end, aligned)
                    expected = np.concatenate([expected, audio], axis=1)
                np.testing.assert_allclose(sample["features"], expected, rtol=1e-6)
                assert sample["captions"] == [texts[i]]
                assert sample["label"] == pytest.approx(truth["labels"][video][1][i, 0], 1e-6)


def test_sdk_missing_items_and_command_line(tmp_path, monkeypatch, capsys):
    make_sdk(tmp_path / "sdk")
    folds = tmp_path / "sdk" / "folds.json"
    with pytest.raises(MissingItemsError, match="vidD"):
        write_plan(plan_mosi_sdk(tmp_path / "sdk", folds), tmp_path / "x")
    argv = ["--sdk", str(tmp_path / "sdk"), "--out", str(tmp_path / "shards")]
    assert run_cli("mosi.py", [*argv, "--folds", str(folds)], monkeypatch) == 2
    assert "vidD (test: not in CMU_MOSI_Visual_Facet_41.csd)" in capsys.readouterr().err
    assert run_cli("mosi.py", [*argv, "--folds", str(folds), "--skip-missing"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "skipped vidD" in out and "features: vision, 3-d" in out
    (tmp_path / "sdk" / "CMU_MOSI_COVAREP.csd").write_bytes(b"not hdf5")
    bad = ["--features", "vision+audio", "--folds", str(folds), "--out", str(tmp_path / "y")]
    assert run_cli("mosi.py", ["--sdk", str(tmp_path / "sdk"), *bad], monkeypatch) == 2
    assert "CMU_MOSI_COVAREP.csd is not an HDF5" in capsys.readouterr().err
