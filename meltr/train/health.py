"""Training-health warnings: signs that a run is not learning what the user thinks it is.

Checked on every log record (interval means), each warned once per run and logged as a flag
``health/<name>`` (1.0 once it has fired, else 0.0) in ``metrics.jsonl`` and W&B:

- ``primary_at_chance``: the primary loss has stayed within ``chance_tolerance`` (relative) of
  its chance value (for a contrastive loss ln(batch size), given by the loss source's
  ``chance_levels(batch_size)``) for ``patience`` log records in a row: the target task is not
  being learned;
- ``primary_ascending``: the primary task's ``dM/dl`` has stayed below zero for ``patience`` log
  records in a row: every inner update climbs the target loss (the message says when every
  task's ``dM/dl`` is negative too). A meta network whose loss derivatives start near zero (the
  paper's initialisation) can be there from its first step;
- ``meta_loss_exploding``: |M| exceeded ``explode_ratio`` times the sum of the task losses;
- ``hypergrad_always_clipped``: the hypergradient norm exceeded ``MetaLearner.meta_grad_clip`` in
  every one of ``patience`` log records with meta steps, under a meta optimizer whose step is
  proportional to the gradient (``torch.optim.SGD``): the meta step size is set by the clip.
  Adaptive optimizers (Adam, AdamW, ...) normalise the step anyway, so there a clipped gradient
  only reweights steps and is not flagged.

The value of M itself is not checked for its sign: only its gradient reaches the backbone.
Every threshold is a field of ``HealthThresholds``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from meltr.learner import MetaLearner
    from meltr.train.recipe import RunSettings

FLAGS = (
    "primary_at_chance",
    "primary_ascending",
    "meta_loss_exploding",
    "hypergrad_always_clipped",
)


@dataclass(frozen=True)
class HealthThresholds:
    """When the checks fire. ``patience``: log records in a row (``train.health_patience``);
    ``chance_tolerance``: relative distance of the primary loss from its chance value;
    ``explode_ratio``: |M| over the sum of the task losses."""

    patience: int = 10
    chance_tolerance: float = 0.02
    explode_ratio: float = 100.0


class HealthMonitor:
    """Watches log records (see the module docstring). ``primary``: the primary task's name;
    ``chance``: its chance-level loss value or None (no such check); ``meta_grad_clip``: the
    learner's clip when its meta optimizer's step is proportional to the gradient, else None (no
    clipping check). ``state`` (the fired flags and counters) is saved in checkpoints."""

    def __init__(
        self,
        primary: str,
        chance: float | None,
        meta_grad_clip: float | None,
        thresholds: HealthThresholds = HealthThresholds(),
        state: dict | None = None,
    ) -> None:
        self.primary, self.chance, self.meta_grad_clip = primary, chance, meta_grad_clip
        self.thresholds = thresholds
        self.state = state if state is not None else {}
        self.state.setdefault("fired", [])
        for counter in ("at_chance", "ascending", "clipped"):
            self.state.setdefault(counter, 0)

    def _fire(self, flag: str, message: str) -> None:
        if flag not in self.state["fired"]:
            self.state["fired"].append(flag)
            warnings.warn(f"training health: {message}", stacklevel=3)

    def _streak(self, counter: str, condition: bool) -> bool:
        """Count ``condition`` in a row in ``state[counter]``; True once it reaches patience."""
        self.state[counter] = self.state[counter] + 1 if condition else 0
        return self.state[counter] >= self.thresholds.patience

    def check(self, step: int, record: Mapping[str, float]) -> dict[str, float]:
        """Update the checks with one log record; return the ``health/*`` flags to log."""
        limits = self.thresholds
        loss = record.get(f"loss/{self.primary}")
        if self.chance is not None and loss is not None:
            tolerance = limits.chance_tolerance * self.chance
            near = math.isfinite(loss) and abs(loss - self.chance) <= tolerance
            if self._streak("at_chance", near):
                self._fire(
                    "primary_at_chance",
                    f"the primary loss {self.primary} has stayed at its chance value "
                    f"{self.chance:.3f} for {self.state['at_chance']} log records (step {step}): "
                    "the target task is not being learned (learning rate, temperature, data?)",
                )
        derivatives = {k[len("dM/dl/") :]: v for k, v in record.items() if k.startswith("dM/dl/")}
        primary_slope = derivatives.get(self.primary)
        if primary_slope is not None and self._streak("ascending", primary_slope < 0):
            every = all(v < 0 for v in derivatives.values()) and len(derivatives) > 1
            self._fire(
                "primary_ascending",
                f"dM/dl of the primary task {self.primary} has stayed negative for "
                f"{self.state['ascending']} log records (step {step}, {primary_slope:.3g})"
                + (", and so has every other task's" if every else "")
                + ": the backbone is trained to increase that loss (a meta network starting "
                "near dM/dl = 0, e.g. MetaLossTransformer.init = 'paper', or too large a meta "
                "learning rate?)",
            )
        meta = record.get("meta_loss")
        losses = sum(v for k, v in record.items() if k.startswith("loss/") and math.isfinite(v))
        if meta is not None and math.isfinite(meta):
            if abs(meta) > limits.explode_ratio * max(losses, 1e-12):
                self._fire(
                    "meta_loss_exploding",
                    f"|M| = {abs(meta):.4g} exceeds {limits.explode_ratio:g} x the sum of the "
                    f"task losses ({losses:.4g}) at step {step}",
                )
        norm = record.get("meta/hypergrad_norm")
        if norm is not None and self.meta_grad_clip is not None:
            clipped = not math.isfinite(norm) or norm > self.meta_grad_clip
            if self._streak("clipped", clipped):
                self._fire(
                    "hypergrad_always_clipped",
                    f"the hypergradient norm exceeded MetaLearner.meta_grad_clip = "
                    f"{self.meta_grad_clip:g} in the last {self.state['clipped']} log records "
                    f"(step {step}, norm {norm:.4g}): the clip, not the hypergradient, sets the "
                    "meta step",
                )
        return {f"health/{flag}": float(flag in self.state["fired"]) for flag in FLAGS}


def run_health_monitor(
    loss_source: Any, learner: MetaLearner, settings: RunSettings, state: dict[str, Any]
) -> HealthMonitor:
    """The monitor of a training run: its primary task is the learner's first task (else the
    loss source's), its chance level the loss source's ``chance_levels(settings.batch_size)``
    (when it has them), the clipping check on when the meta optimizer is ``torch.optim.SGD`` (the
    module docstring), its patience ``settings.health_patience``; ``state`` the run's saved one
    (``Progress.health``)."""
    tasks = learner.keys
    primary = tasks[0] if tasks else list(getattr(loss_source, "tasks", ["?"]))[0]
    chance_levels = getattr(loss_source, "chance_levels", None)
    chance = chance_levels(settings.batch_size).get(primary) if chance_levels else None
    # Clipping sets the meta step only under an optimizer whose step follows the gradient.
    proportional = isinstance(learner.meta_optimizer, torch.optim.SGD)
    return HealthMonitor(
        primary,
        chance,
        learner.meta_grad_clip if proportional else None,
        HealthThresholds(patience=settings.health_patience),
        state=state,
    )
