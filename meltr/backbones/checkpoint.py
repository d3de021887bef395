"""What every official-checkpoint loader shares: reading a file safely and reporting the load.

A backbone's loader has the signature

    load(model, path, *, meta_loss=None, trust_pickle=False) -> LoadReport

and copies the file's weights into ``model`` (and, where the file holds a MELTR meta network and
``meta_loss`` is given, into ``meta_loss``), reporting every key it loaded, could not place,
adapted or ignored. ``tools/inspect_checkpoint.py`` prints that report as JSON.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from os import PathLike

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)
LAYER_NORM_RENAMES = {"gamma": "weight", "beta": "bias"}


@dataclass
class LoadReport:
    """What a checkpoint loader did, by (model-side) key.

    ``loaded``: keys copied into the model (or, prefixed ``aux_model.``, into the meta loss);
    ``missing``: model keys the checkpoint lacks (left as they were); ``unexpected``: checkpoint
    keys the model lacks (skipped); ``adapted``: key -> what was changed to make it fit;
    ``ignored``: checkpoint keys deliberately not used (e.g. a meta network nobody asked for).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """``"12 loaded, 2 missing, ..."``."""
        return ", ".join(f"{len(getattr(self, name))} {name}" for name in self.__dataclass_fields__)

    def log(self, path: str | PathLike) -> None:
        """Warn about missing and unexpected keys, note the adaptations."""
        if self.missing:
            logger.warning("%s: model keys missing from the checkpoint: %s", path, self.missing)
        if self.unexpected:
            logger.warning("%s: checkpoint keys the model lacks: %s", path, self.unexpected)
        for key, change in self.adapted.items():
            logger.info("%s: %s %s", path, key, change)


class CheckpointReadError(ValueError):
    """A checkpoint file that cannot be read; the message names the file and the reason."""


def read_file(path: str | PathLike, trust_pickle: bool) -> object:
    """``torch.load`` of ``path`` on the CPU, with ``weights_only=True`` unless ``trust_pickle``.

    A file that holds Python objects besides tensors is refused (CheckpointReadError naming the
    blocking global) unless ``trust_pickle=True``, which unpickles it in full: only for trusted
    files. An empty, truncated, corrupt or otherwise unreadable file raises CheckpointReadError
    naming it and saying it is damaged (never advising to trust it): a file that does not start
    like a ``torch.save`` file (a zip archive or a pickle) is refused before unpickling, and an
    unpickling error without a blocking global is corruption, not a Python object.
    """
    try:
        _check_torch_format(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch names a Python object it refuses by its GLOBAL opcode; any other refusal is
        # damage (random bytes after a pickle header), which no trust would make readable.
        blocking = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        if not blocking and not trust_pickle:
            raise CheckpointReadError(
                f"cannot read checkpoint {path}: it is corrupt ({_reason(error)})"
            ) from error
        if not trust_pickle:
            raise CheckpointReadError(
                f"{path} holds Python objects besides tensors, so torch.load(weights_only=True) "
                f"refused it ({blocking[0]}). If the file comes from a trusted source, set "
                "train.trust_checkpoint_pickle = True (trust_pickle=True)."
            ) from error
        logger.warning("%s: unpickling in full (trust_pickle=True)", path)
    except (EOFError, OSError) as error:
        raise CheckpointReadError(f"cannot read checkpoint {path}: {_reason(error)}") from error
    except CheckpointReadError:
        raise
    except Exception as error:  # damaged bytes make torch's reader raise almost anything
        raise CheckpointReadError(
            f"cannot read checkpoint {path}: it is corrupt ({_reason(error)})"
        ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ImportError, AttributeError) as error:  # a pickled class this environment lacks
        raise CheckpointReadError(
            f"cannot unpickle checkpoint {path}: {error} (it pickles an object of a module that "
            "is not installed here)"
        ) from error
    except Exception as error:
        raise CheckpointReadError(
            f"cannot read checkpoint {path}: it is corrupt ({_reason(error)})"
        ) from error


# How a torch.save file starts: a zip archive (the default format), or a pickle of protocol 2-5
# (the legacy format and plain pickles).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL = 0x80


def _check_torch_format(path: str | PathLike) -> None:
    """CheckpointReadError unless ``path`` starts like a ``torch.save`` file (EOFError when it is
    empty)."""
    with open(path, "rb") as file:
        head = file.read(4)
    if not head:
        raise EOFError
    if head.startswith(_ZIP_MAGIC) or (
        len(head) > 1 and head[0] == _PICKLE_PROTOCOL and 2 <= head[1] <= 5
    ):
        return
    raise CheckpointReadError(
        f"cannot read checkpoint {path}: it is corrupt or not a checkpoint (it is neither a zip "
        f"archive nor a pickle, as torch.save writes; it starts with {head!r})"
    )


def _reason(error: BaseException) -> str:
    if isinstance(error, EOFError):
        return "the file is empty or truncated"
    if not str(error).strip():
        return type(error).__name__
    if isinstance(error, pickle.UnpicklingError):  # torch's message: the cause is the line after
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        causes = [line for line in lines if line.startswith(("Unsupported", "invalid load key"))]
        if causes:
            return causes[0]
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"


def read_state_dict(
    path: str | PathLike, trust_pickle: bool, containers: Iterable[str] = ("state_dict",)
) -> dict[str, Tensor]:
    """The tensors of a checkpoint: a plain state dict, or the one under the first of
    ``containers`` the file has (Lightning's ``"state_dict"``, ...). CheckpointReadError naming the
    file when it is neither."""
    content = read_file(path, trust_pickle)
    if isinstance(content, Mapping):
        for name in containers:
            if isinstance(content.get(name), Mapping):
                content = content[name]
                break
    if not isinstance(content, Mapping) or not all(isinstance(v, Tensor) for v in content.values()):
        raise CheckpointReadError(
            f"{path} is neither a state dict nor a checkpoint with a "
            + " or ".join(repr(name) for name in containers)
            + " entry"
        )
    return dict(content)


def strip_prefixes(key: str, prefixes: Iterable[str]) -> str:
    """``key`` without any leading run of ``prefixes`` (``module.model.x`` -> ``x``)."""
    prefixes = tuple(prefixes)
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def rename_layer_norm(key: str) -> str:
    """``key`` with a last part ``gamma`` / ``beta`` (LayerNorm parameters in files converted
    from TensorFlow) renamed ``weight`` / ``bias``, as Hugging Face's loaders do."""
    *parents, name = key.split(".")
    return ".".join([*parents, LAYER_NORM_RENAMES.get(name, name)])


def copy_matching(model: nn.Module, state: Mapping[str, Tensor], report: LoadReport) -> None:
    """Copy the tensors of ``state`` whose names ``model`` has into it, and add to ``report`` the
    keys loaded, missing (model keys ``state`` lacks) and unexpected (``state`` keys the model
    lacks). ``shape_mismatch`` naming key and both shapes when a tensor does not fit; nothing is
    copied then."""
    own = model.state_dict()
    to_load = {key: value for key, value in state.items() if key in own}
    for key, value in to_load.items():
        if value.shape != own[key].shape:
            raise shape_mismatch(key, value, own[key])
    model.load_state_dict(to_load, strict=False)
    report.loaded.extend(sorted(to_load))
    report.missing.extend(sorted(key for key in own if key not in to_load))
    report.unexpected.extend(sorted(key for key in state if key not in own))


def shape_mismatch(key: str, value: Tensor, current: Tensor) -> ValueError:
    """The error for a checkpoint tensor that no adaptation fits, naming key and both shapes."""
    return ValueError(
        f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, the model expects "
        f"{tuple(current.shape)}"
    )


def fit_rows(key: str, value: Tensor, current: Tensor, report: LoadReport) -> Tensor:
    """A 2-D table (positions, ...) of another number of rows fitted to ``current``'s: a longer
    one cropped, a shorter one filling the first rows (the model keeps its own values for the
    rest); the change is noted in ``report.adapted``. ``shape_mismatch`` when the columns differ."""
    if value.dim() != 2 or current.dim() != 2 or value.shape[1] != current.shape[1]:
        raise shape_mismatch(key, value, current)
    rows, wanted = value.shape[0], current.shape[0]
    if rows >= wanted:
        if rows > wanted:
            report.adapted[key] = f"cropped from {rows} to {wanted} positions"
        return value[:wanted]
    fitted = current.clone()
    fitted[:rows] = value
    report.adapted[key] = f"rows 0..{rows - 1} loaded, rows {rows}..{wanted - 1} kept"
    return fitted


def match_state(
    state: Mapping[str, Tensor],
    own: Mapping[str, Tensor],
    report: LoadReport,
    skip_mismatched: bool = False,
) -> dict[str, Tensor]:
    """The entries of ``state`` that fit ``own`` (the model's state dict) by name and shape.

    A key the model lacks goes to ``report.unexpected``. A shape disagreement raises
    ``shape_mismatch``; with ``skip_mismatched`` the tensor is skipped instead (listed in
    ``ignored`` and ``adapted``)."""
    to_load = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
        elif value.shape == own[key].shape:
            to_load[key] = value
        elif skip_mismatched:
            report.ignored.append(key)
            report.adapted[key] = (
                f"skipped: checkpoint shape {tuple(value.shape)}, model {tuple(own[key].shape)}"
            )
        else:
            raise shape_mismatch(key, value, own[key])
    return to_load


def load_matching(
    model: torch.nn.Module,
    own: Mapping[str, Tensor],
    to_load: Mapping[str, Tensor],
    report: LoadReport,
    path: str | PathLike,
) -> None:
    """Copy ``to_load`` into ``model`` (non-strict), record the loaded keys and the model keys
    left ``missing`` (those of ``own`` not loaded) in ``report``, and log it."""
    model.load_state_dict(dict(to_load), strict=False)
    report.loaded.extend(to_load)
    report.missing.extend(key for key in own if key not in to_load)
    report.log(path)
