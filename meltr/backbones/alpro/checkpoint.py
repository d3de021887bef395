"""Load the ALPRO release's checkpoints into :class:`~meltr.backbones.alpro.model.Alpro`.

The release saves plain state dicts (``torch.save(model.state_dict())``):

- ``alpro_pretrain.pt`` (``AlproForPretrain``): ``visual_encoder.model.*``,
  ``text_encoder.bert.*``, ``text_encoder.cls.*``, ``vision_proj``, ``text_proj``, ``temp``,
  ``itm_head``, ``mpm_head`` and, when saved with it, the prompter under ``prompter.*``;
- the prompter's own file (``Prompter``): the same base keys plus its prompt-feature buffers
  ``video_prompt_feat`` / ``image_prompt_feat``;
- fine-tuned QA files (``AlproForSequenceClassification``, whose text encoder is a ``BertModel``):
  ``text_encoder.{embeddings,encoder}.*`` and the ``classifier``.

Adaptations, each reported: a leading ``module.`` is stripped; ``text_encoder.embeddings.*`` /
``text_encoder.encoder.*`` become ``text_encoder.bert.*`` (the reverse of the release's
``remove_text_encoder_prefix``); the HF ``position_ids`` buffer is dropped; ``time_embed`` and
``pos_embed`` of another length are resized by nearest-neighbour interpolation along the
sequence, cls row kept, as the release's ``load_state_dict_with_pos_embed_resizing`` does; the
release's scalar ``temp`` becomes the model's one-element ``temp``.
Ignored (listed in ``ignored``): the TimeSformer's Kinetics classifier ``visual_encoder.model.head``
(never applied), the prompter's prompt features (rebuilt from the entity list, as the release
does) and, unless loading the prompter, ``prompter.*``. Any other shape disagreement raises
ValueError naming key and shapes.
"""

from __future__ import annotations

from os import PathLike

import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.checkpoint import (
    LoadReport,
    load_matching,
    match_state,
    read_state_dict,
    strip_prefixes,
)

STRIPPED_PREFIXES = ("module.",)
PROMPTER_PREFIX = "prompter."
BERT_MODEL_PREFIXES = ("text_encoder.embeddings.", "text_encoder.encoder.")
POSITION_IDS = "text_encoder.bert.embeddings.position_ids"
TIME_EMBED = "visual_encoder.model.time_embed"
POS_EMBED = "visual_encoder.model.pos_embed"
TEMPERATURE = "temp"
IGNORED = {
    "visual_encoder.model.head.": "the TimeSformer's Kinetics classifier (ALPRO never applies it)",
    "video_prompt_feat": "the prompter's prompt features (rebuilt from the entity list)",
    "image_prompt_feat": "the prompter's prompt features (rebuilt from the entity list)",
}
# Where a meltr training checkpoint keeps the model's weights (a prompter trained with meltr).
CONTAINERS = ("state_dict", "model")


def load_alpro_checkpoint(
    model: nn.Module,
    path: str | PathLike,
    *,
    meta_loss: nn.Module | None = None,
    trust_pickle: bool = False,
    prompter: bool = False,
) -> LoadReport:
    """Copy an ALPRO state dict into ``model`` (mutated only once every check has passed) and
    report every loaded, missing, unexpected, adapted and ignored key (module docstring).

    ``prompter=True`` loads a prompter: from a file with ``prompter.*`` keys (a pre-training
    checkpoint saved with its prompter) those keys, stripped of the prefix, and nothing else;
    from any other file its base keys. A state dict under ``"state_dict"`` or ``"model"`` (a
    meltr training checkpoint) is read too. ALPRO files hold no meta network, so ``meta_loss``
    must be None. The file is read with ``torch.load(weights_only=True)``; a file that also
    holds Python objects is refused unless ``trust_pickle=True`` (trusted files only).
    """
    if meta_loss is not None:
        raise ValueError(f"{path}: ALPRO checkpoints hold no meta network; leave meta_loss None")
    state = read_state_dict(path, trust_pickle, CONTAINERS)
    keys = {strip_prefixes(key, STRIPPED_PREFIXES): value for key, value in state.items()}
    report = LoadReport()
    if prompter and any(key.startswith(PROMPTER_PREFIX) for key in keys):
        report.ignored.extend(key for key in keys if not key.startswith(PROMPTER_PREFIX))
        keys = {
            key[len(PROMPTER_PREFIX) :]: value
            for key, value in keys.items()
            if key.startswith(PROMPTER_PREFIX)
        }
    own = model.state_dict()
    to_match: dict[str, Tensor] = {}
    for key, value in keys.items():
        key = _renamed(key, report)
        if key == POSITION_IDS:
            report.adapted[key] = "dropped (buffer recomputed by the model)"
        elif _ignored(key):
            report.ignored.append(key)
        elif key in (TIME_EMBED, POS_EMBED) and key in own and value.shape != own[key].shape:
            to_match[key] = _resized(key, value, own[key], report)
        elif key == TEMPERATURE and value.dim() == 0:
            to_match[key] = value.reshape(1)
            report.adapted[key] = "scalar reshaped to one element"
        else:
            to_match[key] = value
    load_matching(model, own, match_state(to_match, own, report), report, path)
    return report


def _renamed(key: str, report: LoadReport) -> str:
    if key.startswith(BERT_MODEL_PREFIXES):
        new_key = "text_encoder.bert." + key[len("text_encoder.") :]
        report.adapted[new_key] = f"renamed from {key}"
        return new_key
    return key


def _ignored(key: str) -> bool:
    return key.startswith(PROMPTER_PREFIX) or any(key.startswith(prefix) for prefix in IGNORED)


def _resized(key: str, value: Tensor, current: Tensor, report: LoadReport) -> Tensor:
    """``time_embed`` ``[1, T, D]`` to the model's frame count, or ``pos_embed`` ``[1, 1 + N,
    D]`` to its patch count (cls row kept), by 1-D nearest interpolation along the sequence."""
    if value.dim() != 3 or value.shape[0] != 1 or value.shape[2] != current.shape[2]:
        raise ValueError(
            f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, the model expects "
            f"{tuple(current.shape)}"
        )
    kept = 1 if key == POS_EMBED else 0
    rows = F.interpolate(
        value[:, kept:].transpose(1, 2).float(), size=current.shape[1] - kept, mode="nearest"
    )
    resized = value.new_empty(current.shape)
    resized[:, :kept] = value[:, :kept]
    resized[:, kept:] = rows.transpose(1, 2).to(value.dtype)
    report.adapted[key] = (
        f"resized from {value.shape[1]} to {current.shape[1]} rows (nearest, as the release)"
    )
    return resized
