"""Loading a ResNet state dict (there is no official MELTR ResNet file: this reads plain state
dicts and checkpoints holding one under ``state_dict`` / ``model``, e.g. an exported run)."""

from __future__ import annotations

from os import PathLike

from torch import nn

from meltr.backbones.checkpoint import LoadReport, copy_matching, read_state_dict, strip_prefixes

STRIPPED_PREFIXES = ("module.", "model.")


def load_resnet_checkpoint(
    model: nn.Module,
    path: str | PathLike,
    meta_loss: nn.Module | None = None,
    *,
    trust_pickle: bool = False,
) -> LoadReport:
    """Copy the tensors of ``path`` whose (prefix-stripped) names the model has; every key is
    reported. ValueError naming the key and both shapes on a shape mismatch (nothing loaded then).
    ``meta_loss`` is not supported (a ResNet file holds no meta network)."""
    if meta_loss is not None:
        raise ValueError(f"{path}: ResNet checkpoints hold no meta network to load")
    state = {
        strip_prefixes(key, STRIPPED_PREFIXES): value
        for key, value in read_state_dict(path, trust_pickle, ("state_dict", "model")).items()
    }
    report = LoadReport()
    copy_matching(model, state, report)
    report.log(path)
    return report
