"""Convert CMU-MOSI in the MMSA pickle layout into shards of the feature + text kind.

Expected input: MMSA's ``Processed/aligned_50.pkl`` or ``unaligned_50.pkl`` (``root`` is the folder
holding ``Processed/`` or the pickles themselves), a pickle of ``{"train", "valid", "test"} ->
{"raw_text": [N] str, "vision": float [N, T_v, 20] (Facet), "audio": float [N, T_a, 5] (COVAREP),
"id": [N] str, "regression_labels": [N] in [-3, 3], ...}``, plus ``vision_lengths`` /
``audio_lengths`` in the unaligned layout (aligned: T = 50 word-aligned rows, zero-padded). The
CMU-MultimodalSDK's ``.csd`` files (HDF5) are read by ``meltr.data.converters.mosi_sdk`` into the
same utterances (it needs ``h5py``: ``pip install meltr[mosi]``).

What UniVL reads: its text encoder takes the utterance (``raw_text``, the sample's one caption),
its "video" encoder a feature sequence. MOSI has no S3D features, so the sequence is the Facet
face features (``features="vision"``, 20-d), or Facet and COVAREP side by side
(``"vision+audio"``, 25-d, aligned layout only: the unaligned sequences have different
lengths); the recipe maps them to UniVL's 1024 inputs with a learned projection
(``UniVL.feature_dim``). Rows: the first ``*_lengths`` rows when the pickle has lengths, else
the rows up to the last non-zero one (the padding); at least one row. Non-finite entries (MMSA
zeroes COVAREP's -inf) become 0, counted in the result.

Splits: train, valid -> ``val``, test (1284 / 229 / 686 utterances). The sample's ``label`` is
the regression label, ``video_id`` MMSA's id (``<video>$_$<clip>``); keys replace characters
other than letters, digits, ``_`` and ``-`` by ``_``.

The pickle is unpickled: use this on MMSA's files only.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meltr.data.converters.release_files import MissingItem, MissingItemsError, load_pickle
from meltr.data.decoders import FeatureText
from meltr.data.writer import Sample, write_shards

LAYOUTS = ("aligned_50", "unaligned_50")
FEATURES = ("vision", "vision+audio")
SPLITS = {"train": "train", "valid": "val", "test": "test"}
REQUIRED = ("raw_text", "vision", "id", "regression_labels")
KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class MosiUtterance:
    """One utterance to write."""

    key: str
    split: str
    video_id: str
    text: str
    label: float
    features: np.ndarray = field(repr=False, compare=False)


@dataclass
class MosiPlan:
    """What a conversion writes, by split; the utterances that cannot be written; how many
    feature entries were not finite (set to 0)."""

    utterances: dict[str, list[MosiUtterance]] = field(default_factory=dict)
    missing: list[MissingItem] = field(default_factory=list)
    non_finite: int = 0


def find_pickle(root: str | os.PathLike, layout: str) -> Path:
    """``root/Processed/<layout>.pkl`` or ``root/<layout>.pkl``; FileNotFoundError naming both."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    candidates = [Path(root) / "Processed" / f"{layout}.pkl", Path(root) / f"{layout}.pkl"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no MMSA pickle: neither {candidates[0]} nor {candidates[1]} exists")


def plan_mosi(
    root: str | os.PathLike, layout: str = "aligned_50", features: str = "vision"
) -> MosiPlan:
    """Read the pickle and list its utterances (module docstring). ValueError for an unknown
    option or a malformed pickle (naming the split and field)."""
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if features == "vision+audio" and layout != "aligned_50":
        raise ValueError(
            "features='vision+audio' needs layout='aligned_50': the unaligned vision and audio "
            "sequences differ in length"
        )
    path = find_pickle(root, layout)
    data = load_pickle(path, "MMSA's processed CMU-MOSI")
    if not isinstance(data, dict) or any(split not in data for split in SPLITS):
        raise ValueError(f"{path}: expected a dict with {list(SPLITS)}")
    plan = MosiPlan()
    for mmsa_split, split in SPLITS.items():
        plan.utterances[split] = []
        _add_split(plan, split, data[mmsa_split], features, f"{path}[{mmsa_split!r}]")
    return plan


def _add_split(plan: MosiPlan, split: str, part: object, features: str, where: str) -> None:
    needed = REQUIRED + (("audio",) if features == "vision+audio" else ())
    if not isinstance(part, dict) or any(name not in part for name in needed):
        raise ValueError(f"{where}: expected the fields {list(needed)}")
    count = len(part["id"])
    for name in needed:
        if len(part[name]) != count:
            raise ValueError(f"{where}: {name!r} has {len(part[name])} entries, 'id' {count}")
    for index in range(count):
        rows = _rows(part, "vision", index)
        if features == "vision+audio":
            rows = np.concatenate([rows, _rows(part, "audio", index)], axis=1)
        rows = finite_rows(plan, rows)
        if "vision_lengths" not in part:
            rows = rows[: max(1, _last_nonzero_row(rows) + 1)]
        text, label = part["raw_text"][index], float(part["regression_labels"][index])
        add_utterance(plan, split, str(part["id"][index]), text, label, rows)


def finite_rows(plan: MosiPlan, rows: np.ndarray) -> np.ndarray:
    """``rows`` as float64 with their non-finite entries set to 0, counted in ``plan``."""
    rows = np.asarray(rows, dtype=np.float64)
    finite = np.isfinite(rows)
    plan.non_finite += int((~finite).sum())
    return np.where(finite, rows, 0.0)


def add_utterance(
    plan: MosiPlan, split: str, video_id: str, text: object, label: float, rows: np.ndarray
) -> None:
    """Add one utterance with its (finite) feature rows to ``plan``, or a ``MissingItem`` when
    it has no text or no finite label."""
    if not isinstance(text, str) or not text.strip():
        plan.missing.append(MissingItem(video_id, split, "empty raw_text"))
    elif not math.isfinite(label):
        plan.missing.append(MissingItem(video_id, split, f"label {label}"))
    else:
        key = KEY_UNSAFE.sub("_", video_id)
        plan.utterances[split].append(
            MosiUtterance(key, split, video_id, text.strip(), label, rows)
        )


def _rows(part: dict, modality: str, index: int) -> np.ndarray:
    """Utterance ``index``'s ``modality`` rows, cut to its length when the pickle has lengths."""
    rows = np.asarray(part[modality][index])
    lengths = part.get(f"{modality}_lengths")
    if lengths is not None:
        rows = rows[: max(1, int(lengths[index]))]
    return rows


def _last_nonzero_row(rows: np.ndarray) -> int:
    """The index of the last row with a non-zero entry (-1 when there is none)."""
    nonzero = np.flatnonzero(np.abs(rows).sum(axis=1) > 0)
    return int(nonzero[-1]) if len(nonzero) else -1


def materialise_utterance(utterance: MosiUtterance) -> Sample:
    """The shard sample of ``utterance``."""
    return {
        "__key__": utterance.key,
        "features.npy": utterance.features.astype(np.float32),
        "json": {
            "video_id": utterance.video_id,
            "captions": [utterance.text],
            "label": utterance.label,
            "split": utterance.split,
        },
    }


def convert_mosi(
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str = "aligned_50",
    features: str = "vision",
    skip_missing: bool = False,
    samples_per_shard: int = 1000,
) -> dict:
    """Write ``train``, ``val`` and ``test`` shards (module docstring). Resumable: complete
    shards in ``out_dir`` are kept. Returns ``{split: [shard paths], "skipped": [MissingItem],
    "non_finite": count, "feature_dim": D}``. Raises MissingItemsError (before writing) for
    utterances without text or with a non-finite label unless ``skip_missing``."""
    return write_plan(plan_mosi(root, layout, features), out_dir, skip_missing, samples_per_shard)


def write_plan(
    plan: MosiPlan,
    out_dir: str | os.PathLike,
    skip_missing: bool = False,
    samples_per_shard: int = 1000,
) -> dict:
    """Write ``plan``'s splits as shards (``convert_mosi``'s result); MissingItemsError before
    writing anything when it lists missing utterances and not ``skip_missing``."""
    if plan.missing and not skip_missing:
        raise MissingItemsError("CMU-MOSI", plan.missing)
    result: dict = {"skipped": plan.missing, "non_finite": plan.non_finite}
    dims = {u.features.shape[1] for us in plan.utterances.values() for u in us}
    result["feature_dim"] = dims.pop() if len(dims) == 1 else sorted(dims)
    for split, utterances in plan.utterances.items():
        result[split] = write_shards(
            utterances, materialise_utterance, out_dir, split, FeatureText, samples_per_shard
        )
    return result
