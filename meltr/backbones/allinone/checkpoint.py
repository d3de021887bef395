"""Load the official All-in-one checkpoints (and MELTR-trained ones) into :class:`AllInOne`.

The release saves PyTorch Lightning files with the weights under ``"state_dict"``; the keys
equal ``AllInOne.state_dict()``'s apart from the adaptations listed in
:func:`load_allinone_checkpoint`.
"""

from __future__ import annotations

from os import PathLike

from torch import Tensor, nn

from meltr.backbones.checkpoint import (
    LoadReport,
    fit_rows,
    read_state_dict,
    shape_mismatch,
    strip_prefixes,
)

STRIPPED_PREFIXES = ("module.", "model.")
META_LOSS_PREFIX = "aux_model."
TEMPORAL_KEY = "transformer.temporal_embed"
TEXT_POSITION_KEY = "text_embeddings.position_embeddings.weight"
# HuggingFace BertEmbeddings buffers; the model recomputes them.
DROPPED_BUFFERS = ("text_embeddings.position_ids", "text_embeddings.token_type_ids")
# The release's image-text matching head is this package's video-text matching head.
RENAMED = {"itm_score.fc.weight": "vtm_score.weight", "itm_score.fc.bias": "vtm_score.bias"}
# The release's meta network (module ``MELTR``: loss_fc1/2, task_embedding, a torch
# TransformerEncoderLayer, fc1) -> ``meltr.MetaLossTransformer`` names; same maths and shapes.
RELEASE_META_LOSS_KEYS = {
    "loss_fc1.weight": "scale_embedding.0.weight",
    "loss_fc1.bias": "scale_embedding.0.bias",
    "loss_fc2.weight": "scale_embedding.2.weight",
    "loss_fc2.bias": "scale_embedding.2.bias",
    "task_embedding.weight": "task_embedding.weight",
    "encoder.self_attn.in_proj_weight": "attention.in_proj.weight",
    "encoder.self_attn.in_proj_bias": "attention.in_proj.bias",
    "encoder.self_attn.out_proj.weight": "attention.out_proj.weight",
    "encoder.self_attn.out_proj.bias": "attention.out_proj.bias",
    "encoder.linear1.weight": "feed_forward.0.weight",
    "encoder.linear1.bias": "feed_forward.0.bias",
    "encoder.linear2.weight": "feed_forward.3.weight",
    "encoder.linear2.bias": "feed_forward.3.bias",
    "encoder.norm1.weight": "norm1.weight",
    "encoder.norm1.bias": "norm1.bias",
    "encoder.norm2.weight": "norm2.weight",
    "encoder.norm2.bias": "norm2.bias",
    "fc1.weight": "head.weight",
}


def load_allinone_checkpoint(
    model: nn.Module,
    path: str | PathLike,
    meta_loss: nn.Module | None = None,
    *,
    trust_pickle: bool = False,
) -> LoadReport:
    """Copy a checkpoint's weights into ``model`` (and ``meta_loss``), mutated in place only
    once every check has passed, and report what happened.

    ``path`` holds a Lightning checkpoint (weights under ``"state_dict"``), one of our training
    checkpoints (weights under ``"model"``: a run pretrained here) or a plain state dict.
    Adaptations: leading ``module.`` / ``model.`` prefixes are stripped; the HF
    ``position_ids`` / ``token_type_ids`` buffers are dropped; ``itm_score.fc.*`` becomes
    ``vtm_score.*``; ``transformer.temporal_embed`` is cropped or zero-padded to the model's
    frame count; a longer text position table is cropped, a shorter one fills the first rows and
    the model keeps its own values for the rest. ``aux_model.*`` (the MELTR meta network) is
    loaded into ``meta_loss`` when given, with the release's names translated to
    ``meltr.MetaLossTransformer``'s where they are the release's; otherwise it is ignored.

    Any other shape disagreement raises ``ValueError`` naming the key and both shapes; so does an
    ``aux_model.*`` set that does not match ``meta_loss`` exactly. The file is read with
    ``torch.load(weights_only=True)``, which never runs code from the file; a file that also
    holds arbitrary Python objects (old Lightning files may) is refused unless
    ``trust_pickle=True``, which unpickles it in full: only do that for files you trust.
    """
    state = read_state_dict(path, trust_pickle, ("state_dict", "model"))
    report = LoadReport()
    backbone, meta = _split_state(state, report)
    own = model.state_dict()
    to_load = {}
    for key, value in backbone.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        to_load[key] = _fit(key, value, own[key], report)
    if meta_loss is None:
        report.ignored.extend(META_LOSS_PREFIX + k for k in meta)
    else:
        meta = _match_meta_loss(meta_loss, meta, path, report)

    model.load_state_dict(to_load, strict=False)
    report.loaded.extend(to_load)
    report.missing.extend(k for k in own if k not in to_load)
    if meta_loss is not None:
        meta_loss.load_state_dict(meta)
        report.loaded.extend(META_LOSS_PREFIX + k for k in meta)

    report.log(path)
    return report


def _split_state(
    state: dict[str, Tensor], report: LoadReport
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(backbone, meta)``: the checkpoint's backbone weights under the model's names (prefixes
    stripped, ``RENAMED`` applied, ``DROPPED_BUFFERS`` left out) and its meta network's weights
    without ``META_LOSS_PREFIX``; renames and drops recorded in ``report.adapted``."""
    backbone, meta = {}, {}
    for key, value in state.items():
        key = strip_prefixes(key, STRIPPED_PREFIXES)
        if key.startswith(META_LOSS_PREFIX):
            meta[key[len(META_LOSS_PREFIX) :]] = value
        elif key in DROPPED_BUFFERS:
            report.adapted[key] = "dropped (buffer recomputed by the model)"
        elif key in RENAMED:
            report.adapted[RENAMED[key]] = f"renamed from {key}"
            backbone[RENAMED[key]] = value
        else:
            backbone[key] = value
    return backbone, meta


def _fit(key: str, value: Tensor, current: Tensor, report: LoadReport) -> Tensor:
    """``value`` reshaped to ``current``'s shape where the format allows it, else ValueError."""
    if value.shape == current.shape:
        return value
    same_but_dim1 = value.dim() == current.dim() == 3 and value.shape[::2] == current.shape[::2]
    if key == TEMPORAL_KEY and same_but_dim1:
        frames, wanted = value.shape[1], current.shape[1]
        fitted = value.new_zeros(current.shape)
        fitted[:, : min(frames, wanted)] = value[:, :wanted]
        change = "cropped" if frames > wanted else "zero-padded"
        report.adapted[key] = f"{change} from {frames} to {wanted} frames"
        return fitted
    if key == TEXT_POSITION_KEY:
        return fit_rows(key, value, current, report)
    raise shape_mismatch(key, value, current)


def _match_meta_loss(
    meta_loss: nn.Module, meta: dict[str, Tensor], path: str | PathLike, report: LoadReport
) -> dict[str, Tensor]:
    """``meta`` under ``meta_loss``'s key names, or ValueError listing every disagreement."""
    own = meta_loss.state_dict()
    problems = []
    if set(meta) != set(own) and set(meta) == set(RELEASE_META_LOSS_KEYS):
        meta = {RELEASE_META_LOSS_KEYS[k]: v for k, v in meta.items()}
        report.adapted[META_LOSS_PREFIX + "*"] = "renamed from the release's MELTR module"
        if "sum_weight" in own:  # the release's network is the paper's parameterisation
            meta["sum_weight"] = own["sum_weight"].new_zeros(())
    if not meta:
        problems.append(f"the checkpoint has no {META_LOSS_PREFIX}* entries")
    missing = sorted(set(own) - set(meta))
    unexpected = sorted(set(meta) - set(own))
    if meta and missing:
        problems.append(f"meta-loss keys missing from the checkpoint: {missing}")
    if unexpected:
        problems.append(f"checkpoint {META_LOSS_PREFIX}* keys the meta loss lacks: {unexpected}")
    problems.extend(
        f"{META_LOSS_PREFIX}{k}: checkpoint shape {tuple(meta[k].shape)}, meta loss expects "
        f"{tuple(own[k].shape)}"
        for k in sorted(set(own) & set(meta))
        if meta[k].shape != own[k].shape
    )
    if problems:
        raise ValueError(
            f"{path}: cannot load {META_LOSS_PREFIX}* into {type(meta_loss).__name__}: "
            + "; ".join(problems)
        )
    return meta
