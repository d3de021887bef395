"""Write WebDataset shards of any sample kind, resumably.

A shard is ``{split}-{i:06d}.tar`` holding, per sample, the members of its kind
(docs/ARCHITECTURE.md, "Shards"): ``<key>.json`` (the record, with ``"split"``) and the kind's
data members (``mp4``, ``features.npy``, ``image.npy``, ``tensor.npy``), plus optional extra
``<name>.npy`` arrays. The kind is a decoder class of ``meltr.data.decoders`` (a ``SampleKind``);
its ``members``, ``check_record`` and ``check_array`` decide what is valid, so what is written can
be read.

Resumability rests on one rule: shard ``i`` holds descriptions ``[i * n, (i + 1) * n)`` of the
ordered list the caller passes. A shard is written under a temporary name and renamed when complete,
so a final name always means a complete shard; a rerun keeps such shards (after checking that they
hold the expected keys) without materialising their samples.

Conversions never mix. ``<out_dir>/conversion.json`` records, per split, what wrote its shards
(the sample kind, the shard size, the number of samples and a digest of the descriptions and of
the ``materialise`` function with its bound arguments). Writing a split into a directory that
holds that split's shards from another conversion (other inputs or arguments: a 7k MSRVTT
conversion into a 9k one's directory), or shards no record describes, is refused with a
ValueError naming the directory; only a rerun of the same conversion continues it. A converter
never deletes: the user chooses an empty directory or removes the old conversion.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import webdataset as wds
from tqdm import tqdm

from meltr.atomic_files import write_text_atomically
from meltr.data.decoders import CorruptSampleError, SampleKind

# ``{"__key__": str, "json": dict, <member>: bytes | numpy array, ...}``
Sample = dict[str, Any]
# A sample kind: a decoder class of ``meltr.data.decoders``.
Kind = type[SampleKind]


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
    kind: Kind,
    samples_per_shard: int = 256,
    workers: int = 1,
) -> list[Path]:
    """Write ``descriptions`` as shards ``{split}-000000.tar, ...`` into ``out_dir``.

    Args:
        descriptions: ordered sample recipes; each needs a ``key`` attribute (no ``.`` or ``/``,
            unique). Shard ``i`` holds ``descriptions[i * samples_per_shard:(i + 1) * ...]``.
        materialise: ``description -> Sample``: ``{"__key__": key, "json": record, <member>:
            bytes or numpy array}`` (arrays are written as ``.npy``); called only for shards not
            yet on disk. Must be picklable (a module-level function or a ``functools.partial`` of
            one) when ``workers > 1``.
        out_dir: created if needed.
        split: ``"train"``, ``"val"`` or ``"test"``; every sample's ``json["split"]`` must equal it.
        kind: the sample kind (a decoder class such as ``VideoCaptions``); every sample must have
            its members and pass its ``check_record``.
        samples_per_shard: samples per shard (the last shard may hold fewer).
        workers: processes materialising and writing shards in parallel (1 = in this process).

    Returns:
        The paths of all shards, in order (kept and newly written).

    Raises:
        ValueError: bad arguments, a bad key or sample (naming it), ``out_dir`` holding this
            split's shards from another conversion (module docstring), or an existing shard that
            holds other samples than the descriptions say it should (naming the shard).
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _check_keys([d.key for d in descriptions])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _claim_split(out_dir, split, _identity(descriptions, materialise, kind, samples_per_shard))

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
            pending.append((path, chunk, materialise, split, kind))

    done = len(descriptions) - sum(len(job[1]) for job in pending)
    with tqdm(total=len(descriptions), initial=done, desc=f"{split} shards", unit="clip") as bar:
        for written in _run_jobs(pending, workers):
            bar.update(written)
    return paths


RECORD = "conversion.json"
RECORD_FORMAT = "meltr-conversion"


def _identity(
    descriptions: Sequence[Description],
    materialise: Callable[[Description], Sample],
    kind: Kind,
    samples_per_shard: int,
) -> dict[str, Any]:
    """What a split's shards are written from, comparable across runs (no addresses, no times)."""
    digest = hashlib.sha256(_callable_name(materialise).encode())
    for description in descriptions:
        digest.update(repr(description).encode())
    return {
        "kind": kind.__name__,
        "samples_per_shard": samples_per_shard,
        "samples": len(descriptions),
        "digest": digest.hexdigest(),
    }


def _callable_name(function: Callable[..., Any]) -> str:
    """A function's module and name, a partial's with its bound arguments, a callable object's
    class."""
    if isinstance(function, functools.partial):
        bound = f"{function.args!r}{sorted(function.keywords.items())!r}"
        return _callable_name(function.func) + bound
    named = function if hasattr(function, "__qualname__") else type(function)
    return f"{named.__module__}.{named.__qualname__}"


def _claim_split(out_dir: Path, split: str, identity: dict[str, Any]) -> None:
    """Record that ``split`` of ``out_dir`` is written from ``identity``; ValueError naming the
    directory when it holds that split's shards from another conversion or from none recorded."""
    path = out_dir / RECORD
    record = {"format": RECORD_FORMAT, "splits": {}}
    if path.exists():
        try:
            record = json.loads(path.read_text())
            recorded = record["splits"].get(split) if record["format"] == RECORD_FORMAT else None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path} is damaged ({error!r}); delete the conversion") from None
    else:
        recorded = None
    present = sorted(
        p.name
        for pattern in (f"{split}-*.tar", f".{split}-*.partial")
        for p in out_dir.glob(pattern)
    )
    advice = "convert into an empty directory, or delete the old conversion first"
    if present and recorded is None:
        raise ValueError(
            f"{out_dir} holds {split} shards ({', '.join(present[:3])}, ...) that no conversion "
            f"record ({RECORD}) describes: another conversion wrote them; {advice}"
        )
    if present and recorded != identity:
        raise ValueError(
            f"{out_dir} holds the {split} shards of another conversion ({', '.join(present[:3])}"
            f", ...: {recorded['samples']} samples written from other inputs or arguments; this "
            f"conversion has {identity['samples']}); {advice}"
        )
    record["splits"][split] = identity
    write_text_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


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
    kind: Kind,
) -> int:
    """Materialise ``chunk`` into ``path`` via a temporary file renamed on success."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with wds.TarWriter(str(temporary), encoder=False, mtime=0.0) as writer:
            for description in chunk:
                sample = materialise(description)
                _check_sample(sample, description.key, split, kind)
                writer.write({name: _encode(name, value) for name, value in sample.items()})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return len(chunk)


def _encode(name: str, value: Any) -> Any:
    """A member's bytes: JSON for the record, ``.npy`` for arrays, bytes as they are."""
    if name == "__key__":
        return value
    if name == "json":
        return json.dumps(value, sort_keys=True).encode("utf-8")
    if isinstance(value, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, value, allow_pickle=False)
        return buffer.getvalue()
    return bytes(value)


def _check_keys(keys: list[str]) -> None:
    seen = set()
    for key in keys:
        if not isinstance(key, str) or not key or "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must be a non-empty str without '.' or '/'")
        if key in seen:
            raise ValueError(f"sample key {key!r} appears twice")
        seen.add(key)


def _check_sample(sample: Sample, expected_key: str, split: str, kind: Kind) -> None:
    """Raise ValueError naming the key and member if ``sample`` breaks ``kind``'s contract."""
    if not isinstance(sample, dict) or sample.get("__key__") != expected_key:
        found = sample.get("__key__") if isinstance(sample, dict) else type(sample).__name__
        raise ValueError(f"sample {expected_key!r}: materialised as {found!r}")
    missing = [member for member in kind.members if member not in sample]
    if missing:
        raise ValueError(f"sample {expected_key!r}: missing member(s) {missing} of its kind")
    for name, value in sample.items():
        if name in ("__key__", "json"):
            continue
        if name.endswith(".npy") != isinstance(value, np.ndarray):
            raise ValueError(
                f"sample {expected_key!r}: member {name!r} must be "
                + ("a numpy array" if name.endswith(".npy") else "bytes")
            )
        if not isinstance(value, np.ndarray) and (
            not isinstance(value, bytes | bytearray | memoryview) or len(value) == 0
        ):
            raise ValueError(f"sample {expected_key!r}: member {name!r} must be non-empty bytes")
    record = sample["json"]
    if not isinstance(record, dict):
        raise ValueError(f"sample {expected_key!r}: 'json' must be a dict")
    try:
        kind.check_record(record)
        for name in kind.members:
            if name.endswith(".npy"):
                kind.check_array(name, sample[name])
    except CorruptSampleError as error:
        raise ValueError(f"sample {expected_key!r}: {error}") from None
    if record.get("split") != split:
        raise ValueError(
            f"sample {expected_key!r}: json 'split' is {record.get('split')!r}, expected {split!r}"
        )


def _check_existing_shard(path: Path, expected_keys: list[str]) -> None:
    """Raise ValueError unless ``path`` holds the samples ``expected_keys``, in order."""
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except (tarfile.TarError, OSError) as error:
        raise ValueError(f"existing shard {path} is unreadable ({error}); delete it") from error
    if list(dict.fromkeys(name.split(".", 1)[0] for name in names)) != expected_keys:
        raise ValueError(
            f"existing shard {path} holds other samples than expected (first expected key "
            f"{expected_keys[0]!r}); it was written from different inputs: delete it or use "
            "another output directory"
        )
