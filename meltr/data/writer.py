"""Write WebDataset video shards, resumably.

A shard is ``{split}-{i:06d}.tar`` holding, per sample, ``<key>.mp4`` (the video bytes) and
``<key>.json`` (``{"video_id": str, "captions": [str, ...], "split": split}``), the format fixed in
docs/ARCHITECTURE.md.

Resumability rests on one rule: shard ``i`` holds descriptions ``[i * n, (i + 1) * n)`` of the
ordered list the caller passes. A shard is written under a temporary name and renamed when complete,
so a final name always means a complete shard; a rerun keeps such shards (after checking that they
hold the expected keys) without materialising their samples.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, TypedDict

import webdataset as wds
from tqdm import tqdm

SAMPLE_FIELDS = ("__key__", "mp4", "json")
MEMBER_EXTENSIONS = ("json", "mp4")  # TarWriter writes a sample's members in sorted order


class Sample(TypedDict):
    """One shard sample: ``json`` holds ``video_id``, ``captions`` and ``split``."""

    __key__: str
    mp4: bytes
    json: dict


class Description(Protocol):
    """A cheap, picklable recipe for one sample; ``key`` is the sample's ``__key__``."""

    @property
    def key(self) -> str: ...


def shard_path(out_dir: str | os.PathLike, split: str, index: int) -> Path:
    """The final path of shard ``index`` of ``split``."""
    return Path(out_dir) / f"{split}-{index:06d}.tar"


def write_shards(
    descriptions: Sequence[Description],
    materialise: Callable[[Description], Sample],
    out_dir: str | os.PathLike,
    split: str,
    samples_per_shard: int = 256,
    workers: int = 1,
) -> list[Path]:
    """Write ``descriptions`` as shards ``{split}-000000.tar, ...`` into ``out_dir``.

    Args:
        descriptions: ordered sample recipes; each needs a ``key`` attribute (no ``.`` or ``/``,
            unique). Shard ``i`` holds ``descriptions[i * samples_per_shard:(i + 1) * ...]``.
        materialise: ``description -> Sample``; called only for shards not yet on disk. Must be
            picklable (a module-level function or a ``functools.partial`` of one) when
            ``workers > 1``.
        out_dir: created if needed.
        split: ``"train"`` or ``"test"``; every sample's ``json["split"]`` must equal it.
        samples_per_shard: samples per shard (the last shard may hold fewer).
        workers: processes materialising and writing shards in parallel (1 = in this process).

    Returns:
        The paths of all shards, in order (kept and newly written).

    Raises:
        ValueError: bad arguments, a bad key or sample (naming it), or an existing shard that holds
            other samples than the descriptions say it should (naming the shard).
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_keys([d.key for d in descriptions])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    chunks = [
        descriptions[start : start + samples_per_shard]
        for start in range(0, len(descriptions), samples_per_shard)
    ]
    paths = [shard_path(out_dir, split, i) for i in range(len(chunks))]
    pending = []
    for path, chunk in zip(paths, chunks, strict=True):
        if path.exists():
            _check_existing_shard(path, [d.key for d in chunk])
        else:
            pending.append((path, chunk, materialise, split))

    done = len(descriptions) - sum(len(job[1]) for job in pending)
    with tqdm(total=len(descriptions), initial=done, desc=f"{split} shards", unit="clip") as bar:
        for written in _run_jobs(pending, workers):
            bar.update(written)
    return paths


def _run_jobs(jobs: list[tuple], workers: int) -> Iterator[int]:
    """Write each job's shard; yield the number of samples of each finished shard."""
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield _write_shard(*job)
        return
    # spawn: the parent may hold threads (tqdm, torch) that make fork unsafe.
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(jobs))) as pool:
        yield from pool.imap_unordered(_write_shard_job, jobs)


def _write_shard_job(job: tuple) -> int:
    return _write_shard(*job)


def _write_shard(
    path: Path,
    chunk: Sequence[Description],
    materialise: Callable[[Description], Sample],
    split: str,
) -> int:
    """Materialise ``chunk`` into ``path`` via a temporary file renamed on success."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with wds.TarWriter(str(temporary), encoder=False, mtime=0.0) as writer:
            for description in chunk:
                sample = materialise(description)
                _check_sample(sample, description.key, split)
                writer.write(
                    {
                        "__key__": sample["__key__"],
                        "mp4": bytes(sample["mp4"]),
                        "json": json.dumps(sample["json"], sort_keys=True).encode("utf-8"),
                    }
                )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return len(chunk)


def _check_keys(keys: list[str]) -> None:
    seen = set()
    for key in keys:
        if not isinstance(key, str) or not key or "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must be a non-empty str without '.' or '/'")
        if key in seen:
            raise ValueError(f"sample key {key!r} appears twice")
        seen.add(key)


def _check_sample(sample: Sample, expected_key: str, split: str) -> None:
    """Raise ValueError naming the key and field if ``sample`` breaks the shard contract."""
    if not isinstance(sample, dict) or set(sample) != set(SAMPLE_FIELDS):
        fields = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
        raise ValueError(f"sample {expected_key!r}: expected fields {SAMPLE_FIELDS}, got {fields}")
    if sample["__key__"] != expected_key:
        raise ValueError(
            f"sample {expected_key!r}: materialised with __key__ {sample['__key__']!r}"
        )
    if not isinstance(sample["mp4"], (bytes, bytearray, memoryview)) or len(sample["mp4"]) == 0:
        raise ValueError(f"sample {expected_key!r}: 'mp4' must be non-empty bytes")
    meta = sample["json"]
    if not isinstance(meta, dict):
        raise ValueError(f"sample {expected_key!r}: 'json' must be a dict")
    if not isinstance(meta.get("video_id"), str):
        raise ValueError(f"sample {expected_key!r}: json 'video_id' must be a str")
    captions = meta.get("captions")
    if (
        not isinstance(captions, list)
        or not captions
        or not all(isinstance(c, str) and c.strip() for c in captions)
    ):
        raise ValueError(f"sample {expected_key!r}: json 'captions' must be non-empty strings")
    if meta.get("split") != split:
        raise ValueError(
            f"sample {expected_key!r}: json 'split' is {meta.get('split')!r}, expected {split!r}"
        )


def _check_existing_shard(path: Path, expected_keys: list[str]) -> None:
    """Raise ValueError unless ``path`` holds exactly ``expected_keys`` (mp4 + json each)."""
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"existing shard {path} is unreadable ({error}); delete it") from error
    expected = [f"{key}.{ext}" for key in expected_keys for ext in MEMBER_EXTENSIONS]
    if names != expected:
        raise ValueError(
            f"existing shard {path} holds other samples than expected (first expected key "
            f"{expected_keys[0]!r}); it was written from different inputs: delete it or use "
            "another output directory"
        )
