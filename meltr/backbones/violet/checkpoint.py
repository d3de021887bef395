"""Load the Violet release's checkpoints into :class:`~meltr.backbones.violet.model.Violet`.

- ``ckpt_violet_pretrain.pt`` (and the fine-tuned files the release and MELTR's violet/ save the
  same way): a plain state dict whose keys are ``Violet.state_dict()``'s, plus the HF
  ``enc_txt.emb_txt.position_ids`` buffer in files saved with transformers < 4.31.
- ``ckpt_video-swin.pt``: the Video Swin the release starts from, a plain state dict with the
  keys of its ``SwinTransformer3D`` (``patch_embed.*``, ``layers.*``, ``norm.*``), which the
  release loads strictly into ``enc_img.swin``. The mmaction2 layout of the Video Swin release
  (weights under ``"state_dict"``, keys ``backbone.*``, a ``cls_head.*`` classifier) loads too.

The release's own loader copies every tensor whose name and shape match and prints the rest.
These loaders copy the same tensors and report every loaded, missing, unexpected, adapted and
ignored key; a tensor whose shape does not fit raises ValueError naming key and shapes (the
release would skip it silently), unless ``skip_mismatched=True``.
"""

from __future__ import annotations

from os import PathLike

from torch import Tensor, nn

from meltr.backbones.checkpoint import (
    LoadReport,
    load_matching,
    match_state,
    read_state_dict,
    strip_prefixes,
)

STRIPPED_PREFIXES = ("module.",)
SWIN_PREFIX = "enc_img.swin."
SWIN_RELEASE_PREFIXES = ("module.", "backbone.")
SWIN_CLASSIFIER_PREFIX = "cls_head."
# HuggingFace BertEmbeddings buffers; the model recomputes them.
DROPPED_BUFFERS = ("enc_txt.emb_txt.position_ids", "enc_txt.emb_txt.token_type_ids")
VTM_HEAD, MC_HEAD = "fc.", "fc_mc."
# MELTR's violet/ QA models name the matching head ``fc_vtm``; here it is ``fc`` in every setting.
MELTR_VTM_HEAD = "fc_vtm."


def load_violet_checkpoint(
    model: nn.Module,
    path: str | PathLike,
    *,
    meta_loss: nn.Module | None = None,
    trust_pickle: bool = False,
    skip_mismatched: bool = False,
    mc_head_from_vtm: bool = True,
) -> LoadReport:
    """Copy a Violet state dict into ``model`` (mutated only once every check has passed).

    Adaptations: a leading ``module.`` is stripped; ``enc_txt.emb_txt.position_ids`` /
    ``token_type_ids`` are dropped; ``fc_vtm.*`` (MELTR's QA files) becomes ``fc.*`` when the
    file has no ``fc.*``. With ``mc_head_from_vtm`` and a model with a multiple-choice head
    ``fc_mc`` that the file lacks, ``fc_mc`` starts from the file's matching head ``fc`` (the
    Violet release's multiple-choice model scores options with its pretrained ``fc``; MELTR's
    violet/ starts a fresh one).

    A shape disagreement raises ValueError naming key and shapes; with ``skip_mismatched`` the
    tensor is skipped instead (listed in ``ignored`` and ``adapted``; the model keeps its own,
    and the key also counts as missing), as the release does. Violet files hold no meta network,
    so ``meta_loss`` must be None. The file is read with ``torch.load(weights_only=True)``; a file
    that also holds Python objects is refused unless ``trust_pickle=True`` (trusted files only).
    """
    _refuse_meta_loss(meta_loss, path)
    state = read_state_dict(path, trust_pickle)
    report = LoadReport()
    keys = {strip_prefixes(key, STRIPPED_PREFIXES): value for key, value in state.items()}
    rename_vtm = not any(key.startswith(VTM_HEAD) for key in keys)
    backbone: dict[str, Tensor] = {}
    for key, value in keys.items():
        if key in DROPPED_BUFFERS:
            report.adapted[key] = "dropped (buffer recomputed by the model)"
            continue
        if rename_vtm and key.startswith(MELTR_VTM_HEAD):
            new_key = VTM_HEAD + key[len(MELTR_VTM_HEAD) :]
            report.adapted[new_key] = f"renamed from {key}"
            key = new_key
        backbone[key] = value

    own = model.state_dict()
    if mc_head_from_vtm and any(key.startswith(MC_HEAD) for key in own):
        if not any(key.startswith(MC_HEAD) for key in backbone):
            for key in [key for key in backbone if key.startswith(VTM_HEAD)]:
                target = MC_HEAD + key[len(VTM_HEAD) :]
                backbone[target] = backbone[key]
                report.adapted[target] = f"initialised from {key} (the pretrained matching head)"

    to_load = match_state(backbone, own, report, skip_mismatched)
    load_matching(model, own, to_load, report, path)
    return report


def load_video_swin_checkpoint(
    model: nn.Module,
    path: str | PathLike,
    *,
    meta_loss: nn.Module | None = None,
    trust_pickle: bool = False,
) -> LoadReport:
    """Copy the Video Swin weights of ``path`` into ``model.enc_img.swin`` (every other key of
    ``model`` is reported missing).

    Keys ``k`` of a plain state dict land at ``enc_img.swin.k``; leading ``module.`` /
    ``backbone.`` prefixes are stripped, and weights under a ``"state_dict"`` entry are used
    (the mmaction2 files). The classifier of those files (``cls_head.*``) is ignored. A shape
    disagreement raises ValueError naming key and shapes. ``meta_loss`` must be None;
    ``trust_pickle`` as in :func:`load_violet_checkpoint`.
    """
    _refuse_meta_loss(meta_loss, path)
    state = read_state_dict(path, trust_pickle)
    report = LoadReport()
    swin: dict[str, Tensor] = {}
    for key, value in state.items():
        key = strip_prefixes(key, SWIN_RELEASE_PREFIXES)
        if key.startswith(SWIN_CLASSIFIER_PREFIX):
            report.ignored.append(key)
            continue
        swin[key if key.startswith(SWIN_PREFIX) else SWIN_PREFIX + key] = value
    own = model.state_dict()
    to_load = match_state(swin, own, report, skip_mismatched=False)
    load_matching(model, own, to_load, report, path)
    return report


def _refuse_meta_loss(meta_loss: nn.Module | None, path: str | PathLike) -> None:
    if meta_loss is not None:
        raise ValueError(
            f"{path}: Violet checkpoints hold no meta network (MELTR's violet/ saves the model's "
            "state dict only); load the meta loss from a meltr training checkpoint instead"
        )
