"""What a run is made of (``Recipe``) and how it runs (``RunSettings``, gin name ``train``).

A recipe file binds ``Recipe.*`` to the backbone's and the task's components (docs/ARCHITECTURE.md,
"Recipes") and ``train.*`` to the run settings; the macros ``DATA_DIR``, ``VOCAB`` and
``CHECKPOINT`` name the paths. Both are plain dataclasses that gin fills; ``check_paths`` checks
the paths before anything is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meltr.train.config import ConfigError


@dataclass(frozen=True)
class Recipe:
    """The components of a run (factories are called by ``meltr.train.build``).

    model: ``model(vocab_size=...)`` with a tokenizer, else ``model()``; names its FSDP units.
    loss_source: ``loss_source(model, batch) -> {task: scalar}``, primary first.
    task: the evaluator factory (``meltr.tasks``).
    decoder: the sample kind's decoder factory (``meltr.data.decoders``).
    meta_loss: ``meta_loss(num_tasks=T)``; a MELTR network or a fixed / adaptive combiner.
    optimizer: ``optimizer(model.parameters())`` (gin scope ``backbone/``).
    meta_optimizer: ``meta_optimizer(meta_loss.parameters())`` (scope ``meta/``) or None.
    lr_schedule: the learning-rate schedule, ``lr_schedule(optimizer, total_steps=steps)``.
    learner: ``learner(model=, meta_loss=, loss_source=, optimizer=, meta_optimizer=)``.
    tokenizer: ``tokenizer(VOCAB)``, or None for recipes without text.
    checkpoint_loader: ``load(model, CHECKPOINT, *, meta_loss=None, trust_pickle=False)``, or
        None when the backbone has no official checkpoint.
    train_transforms: per-item training transform factories (masking), applied in order.

    Factories of the data side (decoder, transforms, task) get ``tokenizer=`` when their
    signature has that parameter.
    """

    model: Callable[..., Any]
    loss_source: Callable[..., Any]
    task: Callable[..., Any]
    decoder: Callable[..., Any]
    meta_loss: Callable[..., Any]
    optimizer: Callable[..., Any]
    meta_optimizer: Callable[..., Any] | None
    lr_schedule: Callable[..., Any]
    learner: Callable[..., Any]
    tokenizer: Callable[..., Any] | None = None
    checkpoint_loader: Callable[..., Any] | None = None
    train_transforms: Sequence[Callable[..., Any]] = ()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class RunSettings:
    """How long and how often (gin name ``train``; every value is checked on construction).

    steps, batch_size (the global batch), eval_every, checkpoint_every, log_every: positive
    integers; seed: an integer >= 0; eval_batch_size: None (= batch_size) or a positive integer;
    eval_views: random views averaged by the evaluation (1 = the deterministic view); device:
    "auto", "cpu", "cuda", "cuda:N" (single-process runs); data_dir, vocab, checkpoint: the
    ``DATA_DIR``, ``VOCAB`` and ``CHECKPOINT`` paths; require_checkpoint: refuse to train from
    scratch; trust_checkpoint_pickle: let the checkpoint loader unpickle Python objects (only for
    files you trust); checkpoint_meta_loss: also start the meta loss from the checkpoint's meta
    network; max_consecutive_skips: stop the run after this many inner updates in a row were
    skipped for non-finite values; health_patience: log records in a row before a health warning
    (``meltr.train.health``); num_threads: torch's CPU threads (None: torch's default; on a CPU
    shared with other jobs, 1 is often much faster).
    """

    steps: int
    batch_size: int
    eval_every: int
    checkpoint_every: int
    seed: int = 0
    log_every: int = 10
    eval_batch_size: int | None = None
    eval_views: int = 1
    device: str = "auto"
    data_dir: str | None = None
    vocab: str | None = None
    checkpoint: str | None = None
    require_checkpoint: bool = False
    trust_checkpoint_pickle: bool = False
    checkpoint_meta_loss: bool = False
    max_consecutive_skips: int = 20
    health_patience: int = 10
    num_threads: int | None = None

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "eval_every", "checkpoint_every", "log_every")
        for name in (*positive, "eval_views", "max_consecutive_skips", "health_patience"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"train.{name} must be an integer >= 1, got {value!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"train.seed must be an integer >= 0, got {self.seed!r}")
        if self.num_threads is not None and (not _is_int(self.num_threads) or self.num_threads < 1):
            raise ConfigError(
                f"train.num_threads must be None or an integer >= 1, got {self.num_threads!r}"
            )
        if self.eval_batch_size is not None and (
            not _is_int(self.eval_batch_size) or self.eval_batch_size < 1
        ):
            raise ConfigError(
                f"train.eval_batch_size must be None or an integer >= 1, got "
                f"{self.eval_batch_size!r}"
            )
        for name in ("require_checkpoint", "trust_checkpoint_pickle", "checkpoint_meta_loss"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"train.{name} must be True or False, got {value!r}")
        for name in ("data_dir", "vocab", "checkpoint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"train.{name} must be None or a path, got {value!r}")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        ):
            raise ConfigError(
                f"train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )


def check_paths(
    settings: RunSettings, needs_vocab: bool, splits: Sequence[str], training: bool = True
) -> None:
    """Raise ConfigError, saying which macro to set and how, unless every path is usable.

    ``DATA_DIR`` must hold ``<split>-*.tar`` shards for every split in ``splits``; ``VOCAB`` must
    be a file when ``needs_vocab``; for ``training``, ``CHECKPOINT`` must be None (unless
    ``require_checkpoint``) or a file or a folder (a Hugging Face checkpoint folder, which the
    recipe's loader reads). Reads no file content.
    """
    data_dir = settings.data_dir
    if data_dir is None:
        raise ConfigError(_unset("DATA_DIR", "train.data_dir", "/path/to/shards"))
    if not Path(data_dir).is_dir():
        raise ConfigError(f"DATA_DIR (train.data_dir) = {data_dir!r} is not a directory")
    for split in splits:
        if not any(Path(data_dir).glob(f"{split}-*.tar")):
            raise ConfigError(
                f"DATA_DIR (train.data_dir) = {data_dir!r} holds no {split}-*.tar shards"
            )
    if needs_vocab:
        if settings.vocab is None:
            raise ConfigError(_unset("VOCAB", "train.vocab", "/path/to/vocab.txt"))
        if not Path(settings.vocab).is_file():
            raise ConfigError(f"VOCAB (train.vocab) = {settings.vocab!r} is not a file")
    if not training:
        return
    if settings.checkpoint is None:
        if settings.require_checkpoint:
            raise ConfigError(
                _unset("CHECKPOINT", "train.checkpoint", "/path/to/the/official/checkpoint")
                + " (or bind train.require_checkpoint = False to train from scratch)"
            )
    elif not Path(settings.checkpoint).exists():
        raise ConfigError(
            f"CHECKPOINT (train.checkpoint) = {settings.checkpoint!r} is not a file or a folder"
        )


def has_split(data_dir: str, split: str) -> bool:
    """Whether ``data_dir`` holds ``<split>-*.tar`` shards."""
    return any(Path(data_dir).glob(f"{split}-*.tar"))


def _unset(macro: str, parameter: str, example: str) -> str:
    return (
        f"{macro} ({parameter}) is not set; set it with --gin_param \"{macro}='{example}'\" "
        f"(or --{macro}={example})"
    )


def is_better(value: float, best: float | None, higher_is_better: bool) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet); a NaN never does."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if higher_is_better else value < best
