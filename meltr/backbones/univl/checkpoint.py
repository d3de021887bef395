"""Load the official UniVL checkpoint (``univl.pretrained.bin``) and MELTR-trained UniVL files
into :class:`~meltr.backbones.univl.model.UniVL`.

Both are plain state dicts whose keys equal ``UniVL().state_dict()``'s: the release saves
``model.state_dict()`` (MELTR's ``univl/main.py`` too: it never saves its meta network).
"""

from __future__ import annotations

from collections import defaultdict
from os import PathLike

from torch import Tensor, nn

from meltr.backbones.checkpoint import (
    LoadReport,
    fit_rows,
    read_state_dict,
    rename_layer_norm,
    shape_mismatch,
    strip_prefixes,
)

STRIPPED_PREFIXES = ("module.",)
# The prefix of a meta network in meltr's other loaders; no UniVL release writes it.
META_LOSS_PREFIX = "aux_model."
POSITION_KEYS = frozenset(
    f"{tower}.embeddings.position_embeddings.weight"
    for tower in ("bert", "visual", "cross", "decoder")
)


def load_univl_checkpoint(
    model: nn.Module,
    path: str | PathLike,
    *,
    meta_loss: nn.Module | None = None,
    trust_pickle: bool = False,
) -> LoadReport:
    """Copy a checkpoint's weights into ``model`` (and ``meta_loss``), mutated in place only once
    every check has passed, and report what happened.

    Adaptations: a leading ``module.`` is stripped; LayerNorm parameters named ``gamma`` /
    ``beta`` become ``weight`` / ``bias`` (the release's ``init_preweight``); a position table of
    another length (a model built with other ``max_*_positions``) is cropped to the model's
    length, or fills the model's first rows with the rest kept (the release has fixed tables and
    would skip such a tensor with an error message; here it is exact for every position both
    have). Tied weights (see ``model.py``) are one tensor: a checkpoint that has any of a tied
    group's names loads the whole group (the other names are reported as adapted, not missing);
    entries of one group that disagree raise ValueError.

    No UniVL file holds a meta network (MELTR's ``univl/main.py`` saves ``model.state_dict()``
    only), so ``meta_loss`` must be None (ValueError otherwise); ``aux_model.*`` entries, should a
    file have them, are reported as ignored.

    Any other shape disagreement raises ValueError naming the key and both shapes. The file is
    read with ``torch.load(weights_only=True)`` unless ``trust_pickle=True`` (trusted files only).
    """
    if meta_loss is not None:
        raise ValueError(
            f"cannot load a meta loss from {path}: UniVL checkpoints hold no meta network "
            "(MELTR's UniVL release saves the backbone only); pass meta_loss=None"
        )
    state = read_state_dict(path, trust_pickle)
    report = LoadReport()
    backbone: dict[str, Tensor] = {}
    for original, value in state.items():
        key = strip_prefixes(original, STRIPPED_PREFIXES)
        if key.startswith(META_LOSS_PREFIX):
            report.ignored.append(key)
            continue
        renamed = rename_layer_norm(key)
        if renamed in backbone:
            raise ValueError(f"{path}: both {original!r} and another entry give {renamed!r}")
        if renamed != key:
            report.adapted[renamed] = f"renamed from {key}"
        backbone[renamed] = value

    own = model.state_dict()
    to_load = {}
    for key, value in backbone.items():
        if key not in own:
            report.unexpected.append(key)
        else:
            to_load[key] = _fit(key, value, own[key], report)
    loaded_through_tie = _check_tied_groups(model, to_load, path, report)
    model.load_state_dict(to_load, strict=False)
    report.loaded.extend(to_load)
    report.missing.extend(k for k in own if k not in to_load and k not in loaded_through_tie)
    report.log(path)
    return report


def _fit(key: str, value: Tensor, current: Tensor, report: LoadReport) -> Tensor:
    """``value`` reshaped to ``current``'s shape where the format allows it, else ValueError."""
    if value.shape == current.shape:
        return value
    if key in POSITION_KEYS:
        return fit_rows(key, value, current, report)
    raise shape_mismatch(key, value, current)


def _check_tied_groups(
    model: nn.Module, to_load: dict[str, Tensor], path: str | PathLike, report: LoadReport
) -> set[str]:
    """The state-dict names that share a tensor with a name in ``to_load`` but are not in it
    themselves (each noted in ``report.adapted``); ValueError when two entries of one tied
    group differ."""
    names_of = defaultdict(list)
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names_of[id(parameter)].append(name)
    through_tie = set()
    for names in names_of.values():
        present = [name for name in names if name in to_load]
        if not present or len(names) == 1:
            continue
        first = to_load[present[0]]
        differing = [name for name in present[1:] if not to_load[name].equal(first)]
        if differing:
            raise ValueError(
                f"{path}: {present[0]!r} and {differing} are one tied tensor in the model but "
                "differ in the checkpoint"
            )
        for name in names:
            if name not in to_load:
                through_tie.add(name)
                report.adapted[name] = f"tied to {present[0]}, loaded through it"
    return through_tie
