"""Non-finite values never reach the weights: the checks, the undo of a bad meta update, and the
count of what was skipped."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn

from meltr.ranks import is_data_parallel

SKIP_REASONS = (
    "nonfinite_loss",  # a task loss (inner update skipped)
    "nonfinite_meta_loss",  # M or dM/dl at the step's losses (inner update skipped)
    "nonfinite_grad",  # a gradient of the weights (inner update skipped)
    "nonfinite_hypergrad",  # the hypergradient (meta update skipped)
    "nonfinite_phi",  # phi after the meta update (meta update undone)
)


class NonFiniteParametersError(RuntimeError):
    """A model parameter became non-finite in an inner update whose inputs were finite."""


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry of ``tensors`` is finite. Sharded tensors (DTensor) are checked
    through their local shards and the verdict is agreed over the process group, so every rank
    makes the same decision (a collective in a data-parallel run)."""
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    local = [t for t in local if t.numel()]
    # The max-norm overflows for no finite value (unlike the 2-norm).
    norms = torch._foreach_norm(local, math.inf) if local else []
    device = local[0].device if local else torch.device("cpu")
    bad = torch.stack([~torch.isfinite(n) for n in norms]).any().float() if norms else None
    bad = torch.zeros((), device=device) if bad is None else bad
    if is_data_parallel():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return not bool(bad)


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> str | None:
    """The name of the first tensor with a non-finite entry (None entries are skipped); None
    when all are finite. Agreed over the process group like ``all_finite``."""
    named = [(name, t.detach()) for name, t in named if t is not None]
    if not named or all_finite([t for _, t in named]):
        return None
    return next(name for name, t in named if not all_finite([t]))


def check_parameters_finite(params: Iterable[tuple[str, torch.Tensor]], step: int) -> None:
    """NonFiniteParametersError naming the first non-finite parameter after the inner update of
    step ``step`` (whose gradient was finite)."""
    bad = first_nonfinite(params)
    if bad is not None:
        raise NonFiniteParametersError(
            f"parameter {bad} became non-finite in the inner update of step {step} although its "
            "gradient was finite: the optimizer diverged (learning rate too high?)"
        )


class Guards:
    """The learner's finiteness guards on its updates, and the count of what they skipped:
    running totals per reason (``counts``, reported as ``skipped/<reason>``), the inner updates
    skipped in a row (``consecutive``) and what the latest skip was about (``last``), for the
    caller to warn and to stop a diverged run."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(SKIP_REASONS, 0)
        self.consecutive = 0
        self.last: str | None = None

    def skip_inner_update(self, reason: str, detail: str) -> dict[str, float]:
        """Count an inner update skipped for ``reason`` (a non-finite ``detail``); the metrics."""
        self.counts[reason] += 1
        self.consecutive += 1
        self.last = f"{reason}: non-finite {detail}"
        return self.metrics()

    def applied(self) -> None:
        """An inner update was applied: the run of skips ends."""
        self.consecutive = 0

    def meta_update(
        self,
        meta_loss: nn.Module,
        optimizer: torch.optim.Optimizer,
        grads: list[torch.Tensor],
        norm: float,
        clip: float | None,
        step: int,
    ) -> None:
        """Step the meta loss's parameters phi along ``grads`` (global norm ``norm``, clipped to
        ``clip`` unless None) with ``optimizer``, in the meta step of call ``step``: skipped when
        ``norm`` is non-finite, undone (phi and the optimizer's state restored) when it makes
        phi non-finite, and counted either way."""
        if not math.isfinite(norm):
            self._skip_meta_update("nonfinite_hypergrad", f"meta step {step}, norm {norm}")
            return
        phi = list(meta_loss.parameters())
        saved_phi = [p.detach().clone() for p in phi]
        saved_state = copy.deepcopy(optimizer.state_dict())
        for p, g in zip(phi, grads, strict=True):
            p.grad = g.detach()
        if clip is not None:
            nn.utils.clip_grad_norm_(phi, clip)
        optimizer.step()
        bad = first_nonfinite(meta_loss.named_parameters())
        if bad is None:
            return
        with torch.no_grad():
            for p, saved in zip(phi, saved_phi, strict=True):
                p.copy_(saved)
        optimizer.load_state_dict(saved_state)
        self._skip_meta_update("nonfinite_phi", f"meta step {step} would make {bad} non-finite")

    def _skip_meta_update(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        self.last = f"{reason}: {detail}"

    def metrics(self) -> dict[str, float]:
        return {f"skipped/{k}": float(v) for k, v in self.counts.items()}

    def state_dict(self) -> dict[str, object]:
        """``skipped`` (the counts) and ``consecutive_skips``."""
        return {"skipped": dict(self.counts), "consecutive_skips": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.counts = dict.fromkeys(SKIP_REASONS, 0) | dict(state["skipped"])
        self.consecutive = int(state.get("consecutive_skips", 0))
