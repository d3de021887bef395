"""The MSRVTT converter on a tiny fake release: splits, captions, bytes, missing videos, resume."""

import csv
import json
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from fake_msrvtt import (
    CAPTIONS_PER_VIDEO,
    TEST,
    TEST_CAPTION_INDEX,
    TRAIN_7K,
    TRAIN_9K,
    caption,
    make_release,
)

from meltr.data.converters.msrvtt import convert_msrvtt
from meltr.data.converters.release_files import MissingItemsError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def release(tmp_path):
    return make_release(tmp_path / "MSRVTT")


def read_tars(paths):
    """{key: (mp4 bytes, json)} and the keys in shard order, read with tarfile."""
    samples, order = {}, []
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                if key not in samples:
                    order.append(key)
                mp4, meta = samples.get(key, (None, None))
                samples[key] = (data, meta) if ext == "mp4" else (mp4, json.loads(data))
    return samples, order


def run_cli(*args):
    command = [sys.executable, "datasets/msrvtt.py", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_9k_train_keeps_all_captions_and_test_takes_the_jsfusion_choice(release, tmp_path):
    result = convert_msrvtt(release, tmp_path / "shards", "9k", samples_per_shard=2)
    assert [p.name for p in result["train"]] == [f"train-{i:06d}.tar" for i in range(3)]
    train, order = read_tars(result["train"])
    assert order == TRAIN_9K
    for video in TRAIN_9K:
        mp4, meta = train[video]
        assert mp4 == (release / "videos" / f"{video}.mp4").read_bytes()
        expected = [caption(video, j) for j in range(CAPTIONS_PER_VIDEO)]
        assert meta == {"video_id": video, "captions": expected, "split": "train"}
    test, order = read_tars(result["test"])
    assert order == TEST
    for video in TEST:
        mp4, meta = test[video]
        assert mp4 == (release / "videos" / f"{video}.mp4").read_bytes()
        expected = [caption(video, TEST_CAPTION_INDEX[video])]
        assert meta == {"video_id": video, "captions": expected, "split": "test"}
    assert result["skipped"] == [] and result["test_caption_source"].endswith(".pkl")


def test_7k_split_and_first_caption_without_the_pkl(release, tmp_path):
    os.remove(release / "jsfusion_val_caption_idx.pkl")
    result = convert_msrvtt(release, tmp_path / "shards", "7k")
    assert read_tars(result["train"])[1] == TRAIN_7K
    test, _ = read_tars(result["test"])
    assert {v: m["captions"] for v, (_, m) in test.items()} == {v: [caption(v, 0)] for v in TEST}


def test_val_holds_out_the_last_training_videos_with_their_first_caption(release, tmp_path):
    result = convert_msrvtt(release, tmp_path / "shards", "9k", val_videos=2)
    assert read_tars(result["train"])[1] == TRAIN_9K[:-2]
    val, order = read_tars(result["val"])
    assert order == TRAIN_9K[-2:]
    for video in TRAIN_9K[-2:]:
        assert val[video][1] == {"video_id": video, "captions": [caption(video, 0)], "split": "val"}
    assert read_tars(result["test"])[1] == TEST
    assert convert_msrvtt(release, tmp_path / "none")["val"] == []
    with pytest.raises(ValueError, match=r"val_videos must be in \[0, 5\)"):
        convert_msrvtt(release, tmp_path / "bad", "9k", val_videos=5)


def test_the_univl_csv_takes_precedence_for_the_test_split(release, tmp_path):
    rows = [("ret0", "msr6", "video6", "a csv sentence"), ("ret1", "msr5", "video5", "another")]
    with open(release / "MSRVTT_JSFUSION_test.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["key", "vid_key", "video_id", "sentence"])
        writer.writerows(rows)
    result = convert_msrvtt(release, tmp_path / "shards")
    test, order = read_tars(result["test"])
    assert order == ["video6", "video5"]
    assert test["video6"][1]["captions"] == ["a csv sentence"]
    assert test["video5"][1]["captions"] == ["another"]
    assert test["video5"][0] == (release / "videos" / "video5.mp4").read_bytes()
    assert result["test_caption_source"] == "MSRVTT_JSFUSION_test.csv"


def test_missing_videos_and_captions_stop_the_conversion_naming_them(release, tmp_path):
    os.remove(release / "videos" / "video2.mp4")
    data = json.loads((release / "MSR_VTT.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != "video6"]
    (release / "MSR_VTT.json").write_text(json.dumps(data))
    out = tmp_path / "shards"
    with pytest.raises(MissingItemsError, match="video2.*video6") as raised:
        convert_msrvtt(release, out)
    assert [(m.item_id, m.split) for m in raised.value.missing] == [
        ("video2", "train"),
        ("video6", "test"),
    ]
    assert not out.exists()

    failed = run_cli("--root", release, "--out", out, "--split", "9k")
    assert failed.returncode == 2
    assert "video2" in failed.stderr and "video6" in failed.stderr

    skipped = run_cli("--root", release, "--out", out, "--split", "9k", "--skip-missing")
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped video2" in skipped.stdout and "skipped video6" in skipped.stdout
    assert str(out / "train-000000.tar") in skipped.stdout
    assert read_tars(sorted(out.glob("train-*.tar")))[1] == ["video0", "video1", "video3", "video4"]
    assert read_tars(sorted(out.glob("test-*.tar")))[1] == ["video5"]


def test_a_rerun_keeps_complete_shards_and_completes_a_missing_one(release, tmp_path):
    out = tmp_path / "shards"
    first = convert_msrvtt(release, out, samples_per_shard=2)
    contents = [p.read_bytes() for p in first["train"]]
    stamps = [os.stat(p).st_mtime_ns for p in first["train"]]
    os.remove(first["train"][1])
    second = convert_msrvtt(release, out, samples_per_shard=2)
    assert second["train"] == first["train"]
    assert [p.read_bytes() for p in second["train"]] == contents
    new_stamps = [os.stat(p).st_mtime_ns for p in second["train"]]
    assert new_stamps[0] == stamps[0] and new_stamps[2] == stamps[2]


def test_a_caption_index_outside_the_captions_is_named(release, tmp_path):
    with open(release / "jsfusion_val_caption_idx.pkl", "wb") as file:
        pickle.dump({"video5": 2, "video6": CAPTIONS_PER_VIDEO}, file)
    with pytest.raises(ValueError, match="jsfusion_val_caption_idx.pkl.*video6"):
        convert_msrvtt(release, tmp_path / "shards")


def test_a_csv_without_the_sentence_column_is_named(release, tmp_path):
    (release / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id\nret0,msr5,video5\n")
    with pytest.raises(ValueError, match="MSRVTT_JSFUSION_test.csv.*sentence"):
        convert_msrvtt(release, tmp_path / "shards")


def test_an_unknown_split_is_named(release, tmp_path):
    with pytest.raises(ValueError, match="'8k'"):
        convert_msrvtt(release, tmp_path / "shards", "8k")


def test_a_broken_annotations_file_and_a_missing_root_are_named(release, tmp_path):
    (release / "MSR_VTT.json").write_text('{"annotations": [')
    done = run_cli("--root", release, "--out", tmp_path / "shards")
    assert done.returncode == 2 and "MSR_VTT.json is not valid JSON" in done.stderr
    done = run_cli("--root", tmp_path / "nowhere", "--out", tmp_path / "shards")
    assert done.returncode == 2 and "nowhere is not a directory" in done.stderr
    assert "Traceback" not in done.stderr
