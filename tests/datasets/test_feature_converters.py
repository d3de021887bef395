"""The YouCook2, MSRVTT-feature and CMU-MOSI converters on tiny fakes of each release layout,
built here: what the shards hold when read back through the FeatureText decoder, the named
errors for missing items, --skip-missing, and the command lines."""

import csv
import json
import pickle
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meltr.data.converters.mosi import convert_mosi
from meltr.data.converters.msrvtt_features import convert_msrvtt_features
from meltr.data.converters.release_files import MissingItemsError
from meltr.data.converters.youcook2 import convert_youcook2
from meltr.data.decoders import FeatureText
from meltr.data.stream import eval_loader

REPO = Path(__file__).resolve().parents[2]
FEATURE_DIM = 6


class WordTokenizer:
    """Enough of a tokenizer for the decoder: one id per word (ids are not inspected here)."""

    def encode(self, texts):
        ids = torch.zeros(len(texts), 8, dtype=torch.long)
        return ids, torch.ones_like(ids)


def read_back(out_dir, split, max_frames=64) -> dict[str, dict]:
    """``{video_id: {"features", "captions", "transcript", "label"}}`` of a split, decoded."""
    decoder = FeatureText(WordTokenizer(), max_frames=max_frames)
    samples: dict[str, dict] = {}
    for batch in eval_loader(out_dir, decoder, batch_size=4, split=split, num_workers=0):
        for row, video_id in enumerate(batch["video_id"]):
            sample = samples.setdefault(video_id, {"captions": []})
            length = int(batch["feature_mask"][row].sum())
            sample["features"] = batch["features"][row, :length].numpy()
            sample["captions"].append(batch["caption"][row])
            sample["has_transcript"] = "transcript_ids" in batch
            if "label" in batch:
                sample["label"] = float(batch["label"][row])
    return samples


def write_csv(path, header, rows):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def dump(path, value):
    with open(path, "wb") as file:
        pickle.dump(value, file)


def run_cli(script, argv, monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [script, *argv])
    return runpy.run_path(str(REPO / "datasets" / script), run_name="cli")["main"]()


# ---------------------------------------------------------------- YouCook2


def make_youcook2(root: Path, transcripts: bool) -> dict:
    """Two training videos (one of whose clips has no feature rows), one validation video."""
    root.mkdir()
    rng = np.random.default_rng(0)
    features = {
        name: rng.standard_normal((length, FEATURE_DIM))
        for name, length in (("vidA", 20), ("vidB", 9), ("vidC", 14))
    }
    data = {
        "vidA": {
            "start": [0.0, 4.7, 11.2],
            "end": [3.9, 10.0, 19.5],
            "text": ["chop the onion", "heat oil in a pan", "add the onion"],
        },
        "vidB": {
            "start": [1.0, 12.0],
            "end": [6.2, 15.0],
            "text": ["whisk the eggs", "pour the eggs"],
        },  # clip 1 starts past the end
        "vidC": {"start": [2.5], "end": [8.0], "text": ["slice the tomato"]},
    }
    for entry in data.values():
        spoken = [f"transcript {text}" for text in entry["text"]] if transcripts else None
        entry["transcript"] = np.array(spoken or ["NONE"] * len(entry["text"]), dtype=object)
        entry["start"], entry["end"] = (np.array(entry[k], dtype=object) for k in ("start", "end"))
        entry["text"] = np.array(entry["text"], dtype=object)
    name = "youcookii_data.pickle" if transcripts else "youcookii_data.no_transcript.pickle"
    dump(root / name, data)
    dump(root / "youcookii_videos_features.pickle", features)
    write_csv(
        root / "youcookii_train.csv",
        ["video_id", "feature_file"],
        [["vidA", "vidA"], ["vidB", "vidB"]],
    )
    write_csv(root / "youcookii_val.csv", ["video_id", "feature_file"], [["vidC", "vidC"]])
    return {"features": features, "data": data}


@pytest.mark.parametrize("transcripts", [False, True])
def test_youcook2_clips_are_the_release_slices(tmp_path, transcripts):
    fake = make_youcook2(tmp_path / "youcookii", transcripts)
    with pytest.raises(
        MissingItemsError, match=r"vidB_1 \(train: no feature rows in \[12.0, 15.0\]"
    ):
        convert_youcook2(tmp_path / "youcookii", tmp_path / "shards")
    assert not (tmp_path / "shards").exists()  # nothing written before the check

    result = convert_youcook2(tmp_path / "youcookii", tmp_path / "shards", skip_missing=True)
    assert [str(m) for m in result["skipped"]] == [
        "vidB_1 (train: no feature rows in [12.0, 15.0] of 9)"
    ]
    assert result["with_transcript"] == (5 if transcripts else 0)  # 4 train, 1 test
    train, test = read_back(tmp_path / "shards", "train"), read_back(tmp_path / "shards", "test")
    assert sorted(train) == ["vidA_0", "vidA_1", "vidA_2", "vidB_0"]
    assert sorted(test) == ["vidC_0"]
    for clips in (train, test):
        for key, sample in clips.items():
            video, index = key.rsplit("_", 1)
            entry = fake["data"][video]
            start, end = int(entry["start"][int(index)]), int(entry["end"][int(index)]) + 1
            expected = fake["features"][video][start:end].astype(np.float32)
            np.testing.assert_array_equal(sample["features"], expected)
            assert sample["captions"] == [entry["text"][int(index)]]
            assert sample["has_transcript"] == transcripts


def test_youcook2_command_line(tmp_path, monkeypatch, capsys):
    make_youcook2(tmp_path / "youcookii", transcripts=False)
    argv = ["--root", str(tmp_path / "youcookii"), "--out", str(tmp_path / "shards")]
    assert run_cli("youcook2.py", argv, monkeypatch) == 2
    assert "vidB_1" in capsys.readouterr().err
    assert run_cli("youcook2.py", [*argv, "--skip-missing"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "skipped vidB_1" in out and "0 clips have a transcript" in out
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == [
        "test-000000.tar",
        "train-000000.tar",
    ]


# ---------------------------------------------------------------- MSRVTT features


def make_msrvtt(root: Path, num_videos: int = 9, captions_per_video: int = 3) -> dict:
    root.mkdir()
    rng = np.random.default_rng(1)
    ids = [f"video{i}" for i in range(num_videos)]
    features = {video: rng.standard_normal((3 + i % 4, FEATURE_DIM)) for i, video in enumerate(ids)}
    del features["video4"]
    sentences = [
        {"video_id": video, "caption": f"caption {j} of {video}", "sen_id": len(ids) * j + i}
        for j in range(captions_per_video)
        for i, video in enumerate(ids)
    ]
    json.dump(
        {"videos": [{"video_id": v, "id": i} for i, v in enumerate(ids)], "sentences": sentences},
        open(root / "MSRVTT_data.json", "w"),
    )
    dump(root / "msrvtt_videos_features.pickle", features)
    write_csv(root / "MSRVTT_train.9k.csv", ["video_id"], [[v] for v in ids[:5]])
    write_csv(root / "MSRVTT_train.7k.csv", ["video_id"], [[v] for v in ids[:3]])
    write_csv(
        root / "MSRVTT_JSFUSION_test.csv",
        ["key", "vid_key", "video_id", "sentence"],
        [[f"ret{i}", f"msr{i}", v, f"the test sentence of {v}"] for i, v in enumerate(ids[6:])],
    )
    return {"features": features, "ids": ids}


def test_msrvtt_retrieval_layout(tmp_path):
    fake = make_msrvtt(tmp_path / "msrvtt")
    with pytest.raises(MissingItemsError, match=r"video4 \(train: no features"):
        convert_msrvtt_features(tmp_path / "msrvtt", tmp_path / "shards")
    convert_msrvtt_features(tmp_path / "msrvtt", tmp_path / "shards", skip_missing=True)
    train, test = read_back(tmp_path / "shards", "train"), read_back(tmp_path / "shards", "test")
    assert sorted(train) == ["video0", "video1", "video2", "video3"]
    assert train["video2"]["captions"] == [f"caption {j} of video2" for j in range(3)]
    np.testing.assert_array_equal(
        train["video3"]["features"], fake["features"]["video3"].astype(np.float32)
    )
    assert {v: s["captions"] for v, s in test.items()} == {
        v: [f"the test sentence of {v}"] for v in ("video6", "video7", "video8")
    }
    assert not list((tmp_path / "shards").glob("val-*"))
    seven = convert_msrvtt_features(tmp_path / "msrvtt", tmp_path / "shards7", "retrieval-7k")
    assert (
        seven["skipped"] == []
        and sorted(read_back(tmp_path / "shards7", "train")) == fake["ids"][:3]
    )


def test_msrvtt_caption_layout_splits_by_position_with_every_reference(tmp_path, monkeypatch):
    make_msrvtt(tmp_path / "msrvtt")
    argv = [
        "--root",
        str(tmp_path / "msrvtt"),
        "--out",
        str(tmp_path / "shards"),
        "--layout",
        "caption",
    ]
    assert run_cli("msrvtt_features.py", argv, monkeypatch) == 2  # not 6513 + 497 + 2990 videos
    argv += ["--num-train", "4", "--num-val", "2"]
    assert run_cli("msrvtt_features.py", argv, monkeypatch) == 2  # video4 has no features
    result = convert_msrvtt_features(
        tmp_path / "msrvtt",
        tmp_path / "shards",
        "caption",
        skip_missing=True,
        num_train=4,
        num_val=2,
    )
    assert [m.item_id for m in result["skipped"]] == ["video4"]  # a val video
    splits = {split: read_back(tmp_path / "shards", split) for split in ("train", "val", "test")}
    assert {split: sorted(s) for split, s in splits.items()} == {
        "train": ["video0", "video1", "video2", "video3"],
        "val": ["video5"],
        "test": ["video6", "video7", "video8"],
    }
    assert splits["test"]["video7"]["captions"] == [f"caption {j} of video7" for j in range(3)]
    with pytest.raises(ValueError, match="needs more than"):
        convert_msrvtt_features(
            tmp_path / "msrvtt", tmp_path / "x", "caption", num_train=8, num_val=1
        )


# ---------------------------------------------------------------- CMU-MOSI (MMSA)


def make_mosi(root: Path, aligned: bool) -> dict:
    """MMSA's layout: three splits of a few utterances; aligned rows zero-padded to 6."""
    (root / "Processed").mkdir(parents=True)
    rng = np.random.default_rng(2)
    data, truth = {}, {}
    for split, count in (("train", 3), ("valid", 2), ("test", 2)):
        lengths = rng.integers(1, 6, size=count)
        vision = np.zeros((count, 6, 4))
        audio = np.zeros((count, 6 if aligned else 9, 2))
        for i, length in enumerate(lengths):
            vision[i, :length] = rng.standard_normal((length, 4))
            audio[i, : (length if aligned else length + 2)] = rng.standard_normal(
                (length if aligned else length + 2, 2)
            )
        audio[0, 0, 1] = -np.inf
        ids = [f"clip{split}{i}$_${i + 1}" for i in range(count)]
        part = {
            "raw_text": np.array([f"utterance {i} of {split}" for i in range(count)], dtype=object),
            "vision": vision,
            "audio": audio,
            "id": np.array(ids, dtype=object),
            "regression_labels": rng.uniform(-3, 3, size=count),
            "text": np.zeros((count, 6, 3)),
        }
        if not aligned:
            part["vision_lengths"], part["audio_lengths"] = list(lengths), list(lengths + 2)
        data[split] = part
        truth[split] = part
    dump(root / "Processed" / ("aligned_50.pkl" if aligned else "unaligned_50.pkl"), data)
    return truth


@pytest.mark.parametrize(("aligned", "features"), [(False, "vision"), (True, "vision+audio")])
def test_mosi_utterances_keep_text_label_and_real_rows(tmp_path, aligned, features):
    truth = make_mosi(tmp_path / "mosi", aligned)
    layout = "aligned_50" if aligned else "unaligned_50"
    result = convert_mosi(tmp_path / "mosi", tmp_path / "shards", layout, features)
    assert result["feature_dim"] == (6 if features == "vision+audio" else 4)
    assert result["non_finite"] == (3 if features == "vision+audio" else 0)
    for mmsa_split, split in (("train", "train"), ("valid", "val"), ("test", "test")):
        part, samples = truth[mmsa_split], read_back(tmp_path / "shards", split)
        assert sorted(samples) == sorted(part["id"])
        for i, video_id in enumerate(part["id"]):
            real = int(np.abs(part["vision"][i]).sum(axis=1).nonzero()[0][-1]) + 1
            expected = part["vision"][i, :real]
            if features == "vision+audio":
                audio = np.nan_to_num(part["audio"][i, :real], neginf=0.0)
                expected = np.concatenate([expected, audio], axis=1)
            np.testing.assert_allclose(samples[video_id]["features"], expected, rtol=1e-6)
            assert samples[video_id]["captions"] == [part["raw_text"][i]]
            assert samples[video_id]["label"] == pytest.approx(part["regression_labels"][i], 1e-6)
    keys = sorted(path.name for path in (tmp_path / "shards").glob("*.tar"))
    assert keys == ["test-000000.tar", "train-000000.tar", "val-000000.tar"]


def test_mosi_refuses_what_it_cannot_do(tmp_path, monkeypatch, capsys):
    make_mosi(tmp_path / "mosi", aligned=False)
    with pytest.raises(ValueError, match="needs layout='aligned_50'"):
        convert_mosi(tmp_path / "mosi", tmp_path / "shards", "unaligned_50", "vision+audio")
    argv = ["--root", str(tmp_path / "mosi"), "--out", str(tmp_path / "shards")]
    assert run_cli("mosi.py", argv, monkeypatch) == 2  # no aligned_50.pkl
    assert "aligned_50.pkl" in capsys.readouterr().err
    with open(tmp_path / "mosi" / "Processed" / "unaligned_50.pkl", "rb") as file:
        data = pickle.load(file)
    data["test"]["raw_text"][1] = " "
    dump(tmp_path / "mosi" / "Processed" / "unaligned_50.pkl", data)
    assert run_cli("mosi.py", [*argv, "--layout", "unaligned_50"], monkeypatch) == 2
    assert "cliptest1$_$2 (test: empty raw_text)" in capsys.readouterr().err
