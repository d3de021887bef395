"""Loading a Hugging Face BERT checkpoint folder by its own key names.

Files of ``BertModel`` (``embeddings.*``, ``encoder.*``, ``pooler.*``) and of the task models
(``bert.`` prefix, ``cls.predictions.*`` MLM head, ``classifier.*``) load as they are; TensorFlow
conversions' ``LayerNorm.gamma`` / ``.beta`` are renamed to ``.weight`` / ``.bias`` (reported as
adapted). Heads the file lacks stay as initialised and are reported missing.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from meltr.backbones.bert.folder import read_config, weights_file
from meltr.backbones.checkpoint import (
    CheckpointReadError,
    LoadReport,
    copy_matching,
    read_state_dict,
    rename_layer_norm,
    strip_prefixes,
)

STRIPPED_PREFIXES = ("module.", "bert.")
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
# Keys a BERT file may hold that this model deliberately does not use, and why.
IGNORED = {
    "embeddings.position_ids": "a buffer of positions 0..N-1 (transformers < 4.31)",
    "cls.predictions.decoder.weight": f"the MLM decoder is tied to {WORD_EMBEDDINGS}",
    "cls.predictions.decoder.bias": "the same tensor as cls.predictions.bias",
}


def read_weights(path: Path, trust_pickle: bool) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` file, or of a torch file through ``read_state_dict``;
    CheckpointReadError naming the file when it cannot be read."""
    if path.suffix != ".safetensors":
        return read_state_dict(path, trust_pickle, ("state_dict", "model"))
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointReadError(f"cannot read checkpoint {path}: {error}") from error


def _renamed(key: str, report: LoadReport) -> str:
    renamed = rename_layer_norm(key)
    if renamed != key:
        report.adapted[renamed] = f"renamed from {key}"
    return renamed


def load_bert_checkpoint(
    model: nn.Module,
    path: str | PathLike,
    meta_loss: nn.Module | None = None,
    *,
    trust_pickle: bool = False,
) -> LoadReport:
    """Copy the weights of the BERT checkpoint at ``path`` (a Hugging Face folder, or its weights
    file) into ``model`` (a ``BertTextModel``); every key is reported.

    ValueError naming the file for a folder without ``config.json`` or weights, a checkpoint of
    another architecture (its ``model_type``, or weights without ``embeddings.word_embeddings``),
    and naming key and both shapes for a tensor that does not fit (nothing is loaded then).
    ``meta_loss`` is not supported (a BERT checkpoint holds no meta network).
    """
    if meta_loss is not None:
        raise ValueError(f"{path}: BERT checkpoints hold no meta network to load")
    read_config(path)
    file = weights_file(path)
    report = LoadReport()
    state = {
        _renamed(strip_prefixes(key, STRIPPED_PREFIXES), report): value
        for key, value in read_weights(file, trust_pickle).items()
    }
    if WORD_EMBEDDINGS not in state:
        raise ValueError(
            f"{file} is not a BERT checkpoint: it has no {WORD_EMBEDDINGS} (its keys include "
            f"{sorted(state)[:5]})"
        )
    if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
        state["cls.predictions.bias"] = state.pop("cls.predictions.decoder.bias")
        report.adapted["cls.predictions.bias"] = "taken from cls.predictions.decoder.bias"
    report.ignored = sorted(key for key in state if key in IGNORED)
    copy_matching(model, {k: v for k, v in state.items() if k not in IGNORED}, report)
    report.log(file)
    return report
