"""The one train / eval stream over WebDataset shards, for every sample kind (docs/ARCHITECTURE.md).

What the samples are is the decoder's business (``meltr.data.decoders``); this module decides which
raw samples are read, in which order, by which rank and DataLoader worker, with which random
generator, and what happens to the ones that cannot be used.

Batches are built inside the DataLoader workers (``DataLoader(batch_size=None)``); the DataLoader
hands them out round-robin: global batch ``i`` is batch ``i // num_workers`` of worker
``i % num_workers``.

Training determinism and exact resume. Worker ``w`` of rank ``r`` plays the *role*
``(w + start_batch) % num_workers`` (so that a resumed loader's first batch comes from the role that
would have produced it). A role reads an infinite, deterministic stream of raw samples: endless
passes over all shards, each pass in a new random order, through a shuffle buffer, both seeded by
(seed, rank, role). Its ``j``-th batch is made of the raw samples ``[j * batch_size, (j + 1) *
batch_size)`` of that stream, and every random choice for raw sample ``n`` (the decoder's, then the
transforms') comes from a generator seeded by (seed, rank, role, n). Resuming at ``start_batch``
therefore drops the first ``(start_batch + w) // num_workers`` batches' worth of raw samples without
decoding them, and yields exactly what an uninterrupted loader yields from batch ``start_batch`` on.

Corrupt samples are skipped with a warning naming the key, the shard and the reason, and counted in
the next batch's ``num_corrupt``; the unreadable rest of a truncated or damaged shard counts as one
corrupt sample. A training batch holds the *valid* samples of its raw window, so
it is smaller than ``batch_size`` by the number of corrupt samples in the window; a window with no
valid sample yields no batch (its count moves to the next batch), the one case where resume is no
longer exact. A training stream whose shards hold no sample at all, or whose last
``max_consecutive_corrupt`` samples were all corrupt, raises ``NoUsableSamplesError`` naming the
shards and the reasons, instead of waiting forever.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import os
import random
import signal
import tarfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset
from webdataset.tariterators import group_by_keys, tar_file_expander

from meltr.data.decoders import CorruptSampleError, collate

Transform = Callable[[dict, torch.Generator], dict]


class Decoder(Protocol):
    """What the stream needs of a decoder (see ``meltr.data.decoders``)."""

    def train_item(self, sample: dict, generator: torch.Generator) -> dict: ...

    def eval_items(self, sample: dict, generator: torch.Generator, random_view: bool) -> list: ...


class NoUsableSamplesError(RuntimeError):
    """A training stream that cannot produce a batch: empty shards or only corrupt samples."""


def find_shards(data_dir: str | Path, split: str) -> list[str]:
    """Sorted paths of ``<split>-*.tar`` in ``data_dir``; FileNotFoundError naming both if none."""
    shards = sorted(str(path) for path in Path(data_dir).glob(f"{split}-*.tar"))
    if not shards:
        raise FileNotFoundError(f"no {split}-*.tar shards in data directory {data_dir}")
    return shards


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from non-negative integers (different tuples -> unrelated seeds)."""
    state = np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def key_hash(key: str) -> int:
    """A stable (process-independent) integer for a sample key."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _worker() -> tuple[int, int]:
    """``(worker id, number of workers)`` of the current DataLoader worker; ``(0, 1)`` outside."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _warn_corrupt(sample: dict, error: Exception) -> None:
    warnings.warn(
        f"skipping corrupt sample {sample.get('__key__')!r} in shard {sample.get('__url__')}: "
        f"{error}",
        stacklevel=2,
    )


def _reason(error: Exception) -> str:
    """The kind of a corrupt-sample error (its message up to the first colon), for counting."""
    return str(error).split(":", 1)[0]


# The key of the sample that stands for the unread rest of a damaged shard (see _raw_samples).
UNREADABLE_REST = "__unreadable__"


def _raw_samples(shards: Iterable[str]) -> Iterator[dict]:
    """Undecoded samples of ``shards`` in order, each shard's file closed once read.

    A shard that cannot be read to its end (truncated, damaged) is warned about, and the samples
    after the damage, which cannot be counted, are stood for by one sample marked
    ``UNREADABLE_REST`` (after the samples read before it), which the streams count as corrupt.
    """
    for shard in shards:
        errors: list[Exception] = []
        remember = functools.partial(_remember, errors)
        with open(shard, "rb") as stream:
            files = tar_file_expander([{"url": shard, "stream": stream}], handler=remember)
            yield from group_by_keys(files, handler=remember)
            if not errors and not _ends_like_a_tar(stream):
                errors.append(EOFError("the shard ends without the end-of-archive blocks"))
        if errors:
            warnings.warn(
                f"skipping the rest of shard {shard} after a read error: {errors[0]!r}",
                stacklevel=2,
            )
            yield {"__key__": UNREADABLE_REST, "__url__": shard, UNREADABLE_REST: errors[0]}


def _ends_like_a_tar(stream: BinaryIO) -> bool:
    """Whether a tar file ends with the two zero blocks of its end-of-archive marker (or is
    empty). tarfile reads a tar cut at a member boundary without complaint; this tells."""
    size = stream.seek(0, os.SEEK_END)
    if size == 0:
        return True
    if size < 2 * tarfile.BLOCKSIZE:
        return False
    stream.seek(size - 2 * tarfile.BLOCKSIZE)
    return not any(stream.read(2 * tarfile.BLOCKSIZE))


def _remember(errors: list[Exception], error: Exception) -> bool:
    """webdataset's error handler: keep the error, read on (``True``)."""
    errors.append(error)
    return True


def _check_readable(sample: dict) -> None:
    """CorruptSampleError for the stand-in of a damaged shard's unread rest."""
    if UNREADABLE_REST in sample:
        raise CorruptSampleError(f"unreadable shard: {sample[UNREADABLE_REST]!r}")


def _endless_passes(shards: list[str], rng: random.Random) -> Iterator[dict]:
    """Raw samples of endless passes over ``shards``, the shards in a fresh random order on every
    pass. (Drawing each shard independently with replacement puts copies of one shard in the
    shuffle buffer together, and so duplicate videos in a batch, false negatives for a contrastive
    loss.) Raises NoUsableSamplesError when a whole pass yields no sample."""
    while True:
        count = 0
        for sample in _raw_samples(rng.sample(shards, len(shards))):
            count += UNREADABLE_REST not in sample
            yield sample
        if count == 0:
            raise NoUsableSamplesError(
                f"the training shards hold no readable sample: {', '.join(shards)}"
            )


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if rank is None:
        rank = torch.distributed.get_rank() if distributed else 0
    if world_size is None:
        world_size = torch.distributed.get_world_size() if distributed else 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return rank, world_size


class _TrainStream(IterableDataset):
    """Infinite batches of one rank (see the module docstring for the contract)."""

    def __init__(
        self,
        shards: list[str],
        decoder: Decoder,
        transforms: Sequence[Transform],
        batch_size: int,
        seed: int,
        start_batch: int,
        rank: int,
        shuffle_buffer: int,
        max_consecutive_corrupt: int,
    ):
        super().__init__()
        self.shards, self.decoder, self.transforms = shards, decoder, tuple(transforms)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.start_batch, self.shuffle_buffer = start_batch, shuffle_buffer
        self.max_consecutive_corrupt = max_consecutive_corrupt

    def _shuffled_raw_samples(self, role: int) -> Iterator[dict]:
        shard_rng = random.Random(derive_seed(self.seed, self.rank, role, 0))
        samples = _endless_passes(self.shards, shard_rng)
        shuffle_rng = random.Random(derive_seed(self.seed, self.rank, role, 1))
        shuffle = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=shuffle_rng)
        return shuffle(samples)

    def _item(self, sample: dict, generator: torch.Generator) -> dict:
        _check_readable(sample)
        item = self.decoder.train_item(sample, generator)
        for transform in self.transforms:
            item = transform(item, generator)
        return item

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        role = (worker + self.start_batch) % num_workers
        first = (worker + self.start_batch) // num_workers * self.batch_size
        raw = itertools.islice(self._shuffled_raw_samples(role), first, None)
        num_corrupt, consecutive = 0, 0
        reasons: collections.Counter[str] = collections.Counter()
        for window_start in itertools.count(first, self.batch_size):
            items = []
            for index in range(window_start, window_start + self.batch_size):
                sample = next(raw)
                generator = _generator(derive_seed(self.seed, self.rank, role, 2, index))
                try:
                    items.append(self._item(sample, generator))
                    consecutive = 0
                except CorruptSampleError as error:
                    _warn_corrupt(sample, error)
                    num_corrupt, consecutive = num_corrupt + 1, consecutive + 1
                    reasons[_reason(error)] += 1
                    if consecutive >= self.max_consecutive_corrupt:
                        raise NoUsableSamplesError(
                            f"no usable training sample in the last {consecutive} samples read "
                            f"from {', '.join(self.shards)}; skip reasons: "
                            + ", ".join(f"{r} ({n})" for r, n in reasons.most_common())
                        ) from None
            if items:
                yield collate(items, num_corrupt)
                num_corrupt = 0


class _EvalStream(IterableDataset):
    """One pass over a split's shards, this rank-and-worker's share (see ``eval_loader``)."""

    def __init__(
        self,
        shards: list[str],
        decoder: Decoder,
        batch_size: int,
        rank: int,
        world_size: int,
        view: int | None,
    ):
        super().__init__()
        self.shards, self.decoder = shards, decoder
        self.batch_size, self.rank, self.world_size, self.view = batch_size, rank, world_size, view

    def _my_samples(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        readers = self.world_size * num_workers
        reader = self.rank * num_workers + worker
        if len(self.shards) >= readers:
            return _raw_samples(self.shards[reader::readers])
        return itertools.islice(_raw_samples(self.shards), reader, None, readers)

    def _sample_generator(self, key: str) -> torch.Generator:
        if self.view is None:
            return _generator(derive_seed(key_hash(key)))
        return _generator(derive_seed(self.view, key_hash(key)))

    def __iter__(self) -> Iterator[dict]:
        pending: list[dict] = []
        num_corrupt = 0
        for sample in self._my_samples():
            generator = self._sample_generator(sample["__key__"])
            try:
                _check_readable(sample)
                pending += self.decoder.eval_items(sample, generator, self.view is not None)
            except CorruptSampleError as error:
                _warn_corrupt(sample, error)
                num_corrupt += 1
            # A full batch waits for one more item, so that corrupt samples at the end of the
            # stream are still counted (in the last batch).
            while len(pending) > self.batch_size:
                yield collate(pending[: self.batch_size], num_corrupt)
                pending, num_corrupt = pending[self.batch_size :], 0
        if pending:
            yield collate(pending, num_corrupt)


def _leave_signals_to_the_main_process(worker_id: int) -> None:
    """A DataLoader worker ignores SIGTERM, SIGUSR1 and SIGINT. A scheduler (Slurm, Kubernetes)
    signals the whole process group, as Ctrl-C does; the training process stops at the next step
    boundary and checkpoints (``meltr.train.preemption``), or reports where it was interrupted,
    then ends its workers itself. A worker that died of the signal first would crash the run
    before it could save."""
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _check_positive(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_workers(num_workers: int) -> None:
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")


def train_loader(
    data_dir: str | Path,
    decoder: Decoder,
    batch_size: int,
    transforms: Sequence[Transform] = (),
    num_workers: int = 4,
    seed: int = 0,
    start_batch: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    shuffle_buffer: int = 128,
    max_consecutive_corrupt: int = 1000,
) -> DataLoader:
    """Infinite training batches over ``train-*.tar`` in ``data_dir`` (module docstring: contract).

    Each batch holds up to ``batch_size`` items of ``decoder`` (one per raw sample visit), each
    passed through ``transforms`` in order. The batch sequence is a deterministic function of (seed,
    rank, world_size, num_workers); ``start_batch=k`` yields exactly the batches an uninterrupted
    loader yields from batch k on, without decoding the skipped samples. ``rank`` / ``world_size``
    default to those of the initialised process group (else 0 / 1). Every worker of every rank
    reads all shards in endless passes (its own random order), so each always has data and every
    rank can take the same number of steps.
    """
    _check_positive(
        batch_size=batch_size,
        shuffle_buffer=shuffle_buffer,
        max_consecutive_corrupt=max_consecutive_corrupt,
    )
    _check_workers(num_workers)
    for name, value in (("start_batch", start_batch), ("seed", seed)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    rank, _ = _resolve_rank(rank, world_size)
    stream = _TrainStream(
        find_shards(data_dir, "train"),
        decoder,
        transforms,
        batch_size,
        seed,
        start_batch,
        rank,
        shuffle_buffer,
        max_consecutive_corrupt,
    )
    return _loader(stream, num_workers)


def _loader(stream: IterableDataset, num_workers: int) -> DataLoader:
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        worker_init_fn=_leave_signals_to_the_main_process,
    )


def eval_loader(
    data_dir: str | Path,
    decoder: Decoder,
    batch_size: int,
    split: str = "test",
    num_workers: int = 4,
    rank: int | None = None,
    world_size: int | None = None,
    view: int | None = None,
) -> DataLoader:
    """One pass over ``<split>-*.tar`` in ``data_dir``: the decoder's evaluation items.

    ``view=None`` takes the deterministic view (segment-centre frames); ``view=k`` a random view
    from a generator seeded by (k, sample key), a different but reproducible sample per view.
    Each sample is used by exactly one (rank, worker): shards are dealt out round-robin when there
    are at least ``world_size * max(num_workers, 1)`` of them; otherwise every reader reads all
    shards and keeps every ``world_size * workers``-th sample. Order is deterministic and does not
    depend on ``view``. The last batch of each worker may be smaller. Corrupt samples are counted
    in a later batch of the same worker; only a worker whose samples are all corrupt has no batch
    to count them in (they are still warned about).
    """
    _check_positive(batch_size=batch_size)
    _check_workers(num_workers)
    if view is not None and (not isinstance(view, int) or view < 0):
        raise ValueError(f"view must be None or an integer >= 0, got {view!r}")
    rank, world_size = _resolve_rank(rank, world_size)
    stream = _EvalStream(find_shards(data_dir, split), decoder, batch_size, rank, world_size, view)
    return _loader(stream, num_workers)
