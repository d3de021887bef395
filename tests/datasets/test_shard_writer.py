"""write_shards: the shard format, atomic shards, resuming without re-materialising, bad input."""

import os
from dataclasses import dataclass

import pytest
import webdataset as wds

from meltr.data.decoders import VideoCaptions
from meltr.data.writer import write_shards


@dataclass(frozen=True)
class Item:
    key: str
    number: int


def make_sample(item, split="train"):
    return {
        "__key__": item.key,
        "mp4": f"video bytes {item.number}".encode(),
        "json": {"video_id": item.key, "captions": [f"caption {item.number}"], "split": split},
    }


class Recorder:
    """A materialise function that records which items it built, failing on one if asked."""

    def __init__(self, fail_on=None):
        self.built, self.fail_on = [], fail_on

    def __call__(self, item):
        if item.key == self.fail_on:
            raise RuntimeError(f"cannot build {item.key}")
        self.built.append(item.key)
        return make_sample(item)


ITEMS = [Item(f"clip{i}", i) for i in range(7)]


def read_back(paths):
    dataset = wds.WebDataset([str(p) for p in paths], shardshuffle=False).decode()
    return [(s["__key__"], s["mp4"], s["json"]) for s in dataset]


def test_shards_hold_the_samples_in_order_in_the_contracted_format(tmp_path):
    paths = write_shards(ITEMS, Recorder(), tmp_path, "train", VideoCaptions, samples_per_shard=3)
    assert [p.name for p in paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    # no temporary left behind; the record of what wrote the shards
    assert sorted(os.listdir(tmp_path)) == ["conversion.json", *(p.name for p in paths)]
    expected = [(i.key, f"video bytes {i.number}".encode(), make_sample(i)["json"]) for i in ITEMS]
    assert read_back(paths) == expected
    assert [key for key, _, _ in read_back(paths[1:2])] == ["clip3", "clip4", "clip5"]


def test_rerun_keeps_complete_shards_and_materialises_only_missing_ones(tmp_path):
    paths = write_shards(ITEMS, Recorder(), tmp_path, "train", VideoCaptions, samples_per_shard=3)
    contents = [p.read_bytes() for p in paths]
    stamps = [os.stat(p).st_mtime_ns for p in paths]
    untouched = Recorder()
    assert (
        write_shards(ITEMS, untouched, tmp_path, "train", VideoCaptions, samples_per_shard=3)
        == paths
    )
    assert untouched.built == []
    os.remove(paths[1])
    refill = Recorder()
    write_shards(ITEMS, refill, tmp_path, "train", VideoCaptions, samples_per_shard=3)
    assert refill.built == ["clip3", "clip4", "clip5"]
    assert [p.read_bytes() for p in paths] == contents  # reproducible bytes (fixed mtimes)
    assert [os.stat(p).st_mtime_ns for i, p in enumerate(paths) if i != 1] == stamps[::2]


def test_a_crash_leaves_no_shard_under_a_final_name_and_a_rerun_completes(tmp_path):
    with pytest.raises(RuntimeError, match="clip4"):
        write_shards(
            ITEMS, Recorder(fail_on="clip4"), tmp_path, "train", VideoCaptions, samples_per_shard=3
        )
    assert sorted(os.listdir(tmp_path)) == ["conversion.json", "train-000000.tar"]
    resumed = Recorder()
    paths = write_shards(ITEMS, resumed, tmp_path, "train", VideoCaptions, samples_per_shard=3)
    assert resumed.built == ["clip3", "clip4", "clip5", "clip6"]
    assert [key for key, _, _ in read_back(paths)] == [item.key for item in ITEMS]


def test_parallel_workers_write_the_same_bytes(tmp_path):
    serial = write_shards(
        ITEMS, make_sample, tmp_path / "serial", "train", VideoCaptions, 2, workers=1
    )
    parallel = write_shards(
        ITEMS, make_sample, tmp_path / "parallel", "train", VideoCaptions, 2, workers=2
    )
    assert [p.read_bytes() for p in serial] == [p.read_bytes() for p in parallel]


def test_an_existing_shard_with_other_samples_is_refused_by_name(tmp_path):
    write_shards(ITEMS, make_sample, tmp_path, "train", VideoCaptions, samples_per_shard=3)
    shifted = [Item(f"other{i}", i) for i in range(7)]
    with pytest.raises(ValueError, match="train-000000.tar"):
        write_shards(shifted, make_sample, tmp_path, "train", VideoCaptions, samples_per_shard=3)


def broken(field, value):
    def materialise(item):
        sample = make_sample(item)
        if field in sample:
            sample[field] = value
        else:
            sample["json"][field] = value
        return sample

    return materialise


@pytest.mark.parametrize(
    "materialise, message",
    [
        (broken("__key__", "elsewhere"), "'clip0'.*'elsewhere'"),
        (broken("mp4", b""), "'clip0'.*mp4"),
        (broken("captions", []), "'clip0'.*captions"),
        (broken("captions", ["fine", 3]), "'clip0'.*captions"),
        (broken("split", "test"), "'clip0'.*split"),
        (broken("video_id", None), "'clip0'.*video_id"),
    ],
)
def test_a_bad_sample_is_reported_with_its_key_and_field(tmp_path, materialise, message):
    with pytest.raises(ValueError, match=message):
        write_shards(ITEMS, materialise, tmp_path, "train", VideoCaptions)
    assert os.listdir(tmp_path) == ["conversion.json"]  # no shard


@pytest.mark.parametrize("keys", [["a", "a"], ["a.b"], ["a/b"], [""]])
def test_bad_keys_are_refused_before_writing(tmp_path, keys):
    with pytest.raises(ValueError, match="key"):
        write_shards([Item(k, 0) for k in keys], make_sample, tmp_path, "train", VideoCaptions)
