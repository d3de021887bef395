"""Where a recipe's data, vocabulary and initial checkpoint live, checked before anything runs.

The recipes name them with the macros ``DATA_DIR``, ``VOCAB`` and ``CHECKPOINT``. The quickstart
binds ``DATA_DIR`` / ``VOCAB`` to :func:`synthetic_data_dir` / :func:`synthetic_vocab`, which
generate the synthetic dataset into a cache folder the first time.
"""

from __future__ import annotations

import os
from pathlib import Path

from meltr.data.synthetic import ensure_synthetic_dataset
from meltr.train.config import ConfigError


def check_data_paths(
    data_dir: str | None, vocab: str | None, checkpoint: str | None, require_checkpoint: bool
) -> None:
    """Raise ConfigError, saying which macro to set and how, unless every path is usable.

    ``data_dir`` must hold ``train-*.tar`` and ``test-*.tar`` shards, ``vocab`` must be a file,
    ``checkpoint`` must be None (unless ``require_checkpoint``) or a file. Reads no file content.
    """
    if data_dir is None:
        raise ConfigError(_unset("DATA_DIR", "train.data_dir", "/path/to/shards"))
    if not Path(data_dir).is_dir():
        raise ConfigError(f"DATA_DIR (train.data_dir) = {data_dir!r} is not a directory")
    for split in ("train", "test"):
        if not any(Path(data_dir).glob(f"{split}-*.tar")):
            raise ConfigError(
                f"DATA_DIR (train.data_dir) = {data_dir!r} holds no {split}-*.tar shards"
            )
    if vocab is None:
        raise ConfigError(_unset("VOCAB", "train.vocab", "/path/to/vocab.txt"))
    if not Path(vocab).is_file():
        raise ConfigError(f"VOCAB (train.vocab) = {vocab!r} is not a file")
    if checkpoint is None:
        if require_checkpoint:
            raise ConfigError(
                _unset("CHECKPOINT", "train.checkpoint", "/path/to/all-in-one-plus-224.ckpt")
                + " (or bind train.require_checkpoint = False to train from scratch)"
            )
    elif not Path(checkpoint).is_file():
        raise ConfigError(f"CHECKPOINT (train.checkpoint) = {checkpoint!r} is not a file")


def _unset(macro: str, parameter: str, example: str) -> str:
    return (
        f"{macro} ({parameter}) is not set; set it with --gin_param \"{macro}='{example}'\" "
        f"(or --{macro}={example})"
    )


def synthetic_cache_dir(**generator_arguments: object) -> Path:
    """``$MELTR_CACHE`` (default ``~/.cache/meltr``) / ``synthetic-<arguments>``."""
    root = Path(os.environ.get("MELTR_CACHE", Path.home() / ".cache" / "meltr"))
    suffix = "-".join(f"{name}{value}" for name, value in sorted(generator_arguments.items()))
    return root / f"synthetic-{suffix}"


def synthetic_dataset(
    num_train: int = 512,
    num_test: int = 128,
    num_frames: int = 4,
    size: int = 32,
    seed: int = 0,
    workers: int = 2,
) -> dict:
    """The synthetic dataset with these arguments, generated into its cache folder if absent.

    Returns ``ensure_synthetic_dataset``'s paths (``root``, ``vocab``, ``train``, ``test``, ...).
    """
    arguments = dict(num_train=num_train, num_test=num_test, num_frames=num_frames, size=size)
    arguments["seed"] = seed
    return ensure_synthetic_dataset(synthetic_cache_dir(**arguments), workers=workers, **arguments)


def synthetic_data_dir() -> str:
    """The synthetic dataset's shard directory (for ``DATA_DIR``)."""
    return synthetic_dataset()["root"]


def synthetic_vocab() -> str:
    """The synthetic dataset's ``vocab.txt`` (for ``VOCAB``)."""
    return synthetic_dataset()["vocab"]
