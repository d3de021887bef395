"""The generated-dataset cache under concurrent use: processes that ask for the same dataset at
once (runs started together by ``tools/compare.py --jobs``) take turns and all get it whole."""

import json
import multiprocessing
import tarfile
from pathlib import Path

import pytest

from meltr.data.cache import cache_root
from meltr.data.synthetic.shape_images import cached_synthetic_images, generate_synthetic_images

ARGUMENTS = dict(num_train=48, num_val=8, num_test=8, size=8, seed=3, workers=1)


def _generate(cache: str, started=None) -> None:
    import os

    os.environ["MELTR_CACHE"] = cache
    if started is not None:
        started.set()
    cached_synthetic_images(**ARGUMENTS)


def test_two_processes_generating_one_dataset_both_get_every_shard_whole(tmp_path, monkeypatch):
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_generate, args=(str(tmp_path),)) for _ in range(3)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    monkeypatch.setenv("MELTR_CACHE", str(tmp_path))
    paths = cached_synthetic_images(**ARGUMENTS)
    assert str(cache_root()) == str(tmp_path)
    counts = {}
    for split in ("train", "val", "test"):
        for path in paths[split]:
            with tarfile.open(path) as tar:  # raises on a truncated shard
                counts[split] = counts.get(split, 0) + len(tar.getnames())
    assert counts == {"train": 2 * 48, "val": 2 * 8, "test": 2 * 8}  # .json + .npy per image


def test_a_process_waits_while_another_holds_the_dataset(tmp_path, monkeypatch):
    """Deterministically: while this process holds the dataset's lock, a second process asking
    for the dataset writes nothing; once released, it generates the dataset whole."""
    from meltr.data.cache import generation_lock

    monkeypatch.setenv("MELTR_CACHE", str(tmp_path))
    suffix = "-".join(f"{k}{v}" for k, v in sorted(ARGUMENTS.items()) if k != "workers")
    directory = tmp_path / f"synthetic-images-{suffix}"
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    with generation_lock(directory):
        process = context.Process(target=_generate, args=(str(tmp_path), started))
        process.start()
        assert started.wait(timeout=120)
        process.join(timeout=3)  # ample time to create the directory, were it not waiting
        assert process.is_alive() and not directory.exists()
    process.join(timeout=120)
    assert process.exitcode == 0 and (directory / "manifest.json").is_file()


def _forget_conversion_record(root: Path, manifest: dict) -> None:
    """Make ``root`` what meltr wrote before the writer kept ``conversion.json`` (issue 19)."""
    (root / "conversion.json").unlink()
    (root / "manifest.json").write_text(json.dumps(manifest) + "\n")


def _shard_keys(paths: dict) -> list[str]:
    names = []
    for split in ("train", "val", "test"):
        for path in paths[split]:
            with tarfile.open(path) as tar:
                names += tar.getnames()
    return names


def test_a_cache_older_than_conversion_records_is_generated_anew(tmp_path, monkeypatch):
    """A cache folder of the older manifest format (the images generator's own, written before
    the writer recorded conversions) holding shards no conversion record describes: asking for
    the dataset again replaces it, with the same samples, instead of refusing it."""
    monkeypatch.setenv("MELTR_CACHE", str(tmp_path))
    first = cached_synthetic_images(**ARGUMENTS)
    root = Path(first["root"])
    keys = _shard_keys(first)
    arguments = {k: v for k, v in ARGUMENTS.items() if k != "workers"} | {"samples_per_shard": 1000}
    old = {"format": "meltr-synthetic-images-v1", "arguments": arguments}
    _forget_conversion_record(root, old)
    again = cached_synthetic_images(**ARGUMENTS)
    assert again["root"] == str(root) and _shard_keys(again) == keys
    assert (root / "conversion.json").is_file()
    assert json.loads((root / "manifest.json").read_text())["complete"] is True


def test_an_interrupted_dataset_without_a_conversion_record_is_replaced_not_resumed(
    tmp_path, monkeypatch
):
    """The same dataset's manifest, incomplete, over shards no conversion record describes: the
    shards cannot be trusted to resume, so the cache regenerates them; a directory of the user's
    (``replace=False``) is refused, naming it, and left as it is."""
    monkeypatch.setenv("MELTR_CACHE", str(tmp_path))
    first = cached_synthetic_images(**ARGUMENTS)
    root = Path(first["root"])
    manifest = json.loads((root / "manifest.json").read_text())
    Path(first["test"][0]).unlink()  # lost since: the dataset must be resumed
    _forget_conversion_record(root, manifest | {"complete": False})
    arguments = {k: v for k, v in ARGUMENTS.items() if k != "workers"}
    with pytest.raises(ValueError, match="without a conversion record"):
        generate_synthetic_images(root, **arguments)
    assert not (root / "conversion.json").exists()
    again = cached_synthetic_images(**ARGUMENTS)
    assert _shard_keys(again) == _shard_keys(first) and (root / "conversion.json").is_file()
