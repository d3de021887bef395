"""datasets/cifar.py on tiny fakes of the CIFAR-100 and CIFAR-10 python releases."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from meltr.data.converters.cifar import CifarFormatError, convert_cifar
from meltr.data.decoders import ImageLabel
from meltr.data.stream import eval_loader

REPO = Path(__file__).resolve().parents[2]


def images(count: int, offset: int) -> np.ndarray:
    """``[count, 3072]`` rows: R, G and B planes; image i has R = i, G = 2i, B = 3i + offset."""
    rows = np.zeros((count, 3, 1024), np.uint8)
    for i in range(count):
        rows[i] = np.array([[i], [2 * i], [3 * i + offset]], np.uint8)
    return rows.reshape(count, 3072)


def fake_cifar100(root: Path, train: int = 20, test: int = 6) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, count, offset in (("train", train, 0), ("test", test, 100)):
        content = {
            b"data": images(count, offset),
            b"fine_labels": [i % 4 for i in range(count)],
            b"coarse_labels": [i % 2 for i in range(count)],
            b"filenames": [f"{split}_image_{i}.png".encode() for i in range(count)],
            b"batch_label": split.encode(),
        }
        (folder / split).write_bytes(pickle.dumps(content))
    meta = {
        b"fine_label_names": [b"apple", b"bee", b"cat", b"dog"],
        b"coarse_label_names": [b"a", b"b"],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return folder


def read(out: Path, split: str) -> list[dict]:
    decoder = ImageLabel(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return [b for b in eval_loader(out, decoder, 100, split=split, num_workers=0)]


def test_cifar100_converts_with_a_seeded_validation_split(tmp_path):
    release = fake_cifar100(tmp_path)
    result = convert_cifar(release, tmp_path / "out", val_size=5, seed=1, samples_per_shard=8)
    assert result["release"] == "cifar-100" and result["classes"] == ["apple", "bee", "cat", "dog"]
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == result["classes"]
    (train,), (val,), (test,) = (read(tmp_path / "out", s) for s in ("train", "val", "test"))
    assert len(train["image_id"]) == 15 and len(val["image_id"]) == 5 and len(test["image_id"]) == 6
    expected_val = sorted(np.random.default_rng(1).permutation(20)[:5].tolist())
    assert sorted(int(key.split("-")[0]) for key in val["image_id"]) == expected_val
    for batch, offset in ((train, 0), (val, 0), (test, 100)):
        for row, key in enumerate(batch["image_id"]):
            i = int(key.split("-")[0])
            assert batch["label"][row] == i % 4
            pixel = torch.tensor([i, 2 * i, 3 * i + offset], dtype=torch.float32) / 255
            torch.testing.assert_close(batch["image"][row][:, 0, 0], pixel)  # R|G|B planes
    coarse = convert_cifar(release, tmp_path / "coarse", labels="coarse", val_size=0)
    assert coarse["classes"] == ["a", "b"] and coarse["val"] == []


def test_cifar10_layout_and_the_command_line(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, count in [*((f"data_batch_{i}", 2) for i in range(1, 6)), ("test_batch", 3)]:
        content = {
            b"data": images(count, 0),
            b"labels": [1] * count,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(count)],
        }
        (folder / name).write_bytes(pickle.dumps(content))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"plane", b"car"]}))
    done = subprocess.run(
        [
            sys.executable,
            "datasets/cifar.py",
            "--root",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--val-size",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "cifar-10: 2 classes" in done.stdout
    assert [len(read(tmp_path / "o", s)[0]["image_id"]) for s in ("train", "val", "test")] == [
        8,
        2,
        3,
    ]


def test_missing_and_malformed_release_files_are_named(tmp_path):
    with pytest.raises(CifarFormatError, match="cifar-100-python"):
        convert_cifar(tmp_path, tmp_path / "out")
    release = fake_cifar100(tmp_path / "broken")
    (release / "test").write_bytes(b"not a pickle")
    with pytest.raises(CifarFormatError, match=r"cifar-100-python/test"):
        convert_cifar(release, tmp_path / "out")
    with pytest.raises(ValueError, match="val_size"):
        convert_cifar(fake_cifar100(tmp_path / "small"), tmp_path / "out2", val_size=20)
