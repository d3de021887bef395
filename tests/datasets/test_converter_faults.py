"""Converters never mix two conversions in one --out, never pack an undecodable video, and name
the file behind a malformed pickle or a binary csv (exit 2, no traceback)."""

import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from fake_msrvtt import TRAIN_7K, TRAIN_9K, make_release
from fake_violet_release import make_kinetics

from meltr.data.converters.msrvtt import convert_msrvtt
from meltr.data.converters.release_files import MissingItemsError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def release(tmp_path):
    return make_release(tmp_path / "MSRVTT")


def msrvtt_cli(*args):
    command = [sys.executable, "datasets/msrvtt.py", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def keys(shards):
    names = [name for shard in shards for name in tarfile.open(shard).getnames()]
    return list(dict.fromkeys(name.split(".", 1)[0] for name in names))


def directory_bytes(directory: Path) -> dict:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_a_conversion_into_the_folder_of_another_is_refused_naming_it(release, tmp_path):
    # The 7k list starts like the 9k list: its first shard (video0, video1) matches the 9k
    # conversion's, so only the record tells the two apart; the 9k folder's other shards would
    # otherwise stay and be trained on.
    out = tmp_path / "shards"
    convert_msrvtt(release, out, "9k", samples_per_shard=2)
    assert keys(sorted(out.glob("train-*.tar"))) == TRAIN_9K
    before = directory_bytes(out)
    refused = msrvtt_cli("--root", release, "--out", out, "--split", "7k", "--samples-per-shard", 2)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"{out} holds the train shards of another conversion" in refused.stderr
    assert directory_bytes(out) == before

    # The same conversion again resumes; into an empty folder the 7k conversion is its own.
    convert_msrvtt(release, out, "9k", samples_per_shard=2)
    assert directory_bytes(out) == before
    seven = convert_msrvtt(release, tmp_path / "7k", "7k", samples_per_shard=2)
    assert keys(seven["train"]) == TRAIN_7K


def test_shards_without_a_record_are_not_mixed_with_a_new_conversion(release, tmp_path):
    out = tmp_path / "shards"
    convert_msrvtt(release, out, "9k", samples_per_shard=2)
    (out / "conversion.json").unlink()  # e.g. written by an older version or another tool
    with pytest.raises(ValueError, match="no conversion record"):
        convert_msrvtt(release, out, "7k", samples_per_shard=2)


def test_an_undecodable_video_is_missing_not_packed(release, tmp_path):
    (release / "videos" / "video3.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 500)
    out = tmp_path / "shards"
    with pytest.raises(MissingItemsError, match=r"video3 \(train: .*video3.mp4 does not decode"):
        convert_msrvtt(release, out)
    assert not list(out.glob("*.tar"))
    result = convert_msrvtt(release, out, skip_missing=True)
    assert [str(m.item_id) for m in result["skipped"]] == ["video3"]
    assert keys(result["train"]) == [video for video in TRAIN_9K if video != "video3"]


def test_a_malformed_caption_index_pickle_is_named(release, tmp_path):
    (release / "jsfusion_val_caption_idx.pkl").write_bytes(b"\x80\x04not a pickle at all")
    done = msrvtt_cli("--root", release, "--out", tmp_path / "shards")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "jsfusion_val_caption_idx.pkl is not a readable pickle" in done.stderr


def test_a_binary_kinetics_csv_is_named(tmp_path, capsys):
    release = make_kinetics(tmp_path / "k400")
    (release / "validate.csv").write_bytes(b"\xff\xfe\x00label,\x00\x9c\xff" * 20)
    spec = importlib.util.spec_from_file_location("kinetics400", REPO / "datasets/kinetics400.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--root", str(release), "--out", str(tmp_path / "out")]) == 2
    assert f"{release / 'validate.csv'} is not a readable csv" in capsys.readouterr().err
