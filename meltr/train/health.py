"""Training-health warnings: signs that a run is not learning what the user thinks it is.

Checked on every log record (interval means), each warned once per run and logged as a flag
``health/<name>`` (1.0 once it has fired, else 0.0) in ``metrics.jsonl`` and W&B:

- ``primary_at_chance``: the primary loss has stayed within 2 % of its chance value (for a
  contrastive loss ln(batch size), given by the loss source's ``chance_levels(batch_size)``) for
  ``patience`` log records in a row: the target task is not being learned;
- ``meta_loss_negative``: the meta loss M went below zero (it is then no longer a loss the
  backbone can be descending towards a minimum of);
- ``meta_loss_exploding``: |M| exceeded ``explode_ratio`` times the sum of the task losses;
- ``hypergrad_always_clipped``: the hypergradient norm exceeded ``MetaLearner.meta_grad_clip`` in
  every one of ``patience`` log records with meta steps: the meta step size is set by the clip.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

FLAGS = (
    "primary_at_chance",
    "meta_loss_negative",
    "meta_loss_exploding",
    "hypergrad_always_clipped",
)


class HealthMonitor:
    """Watches log records (see the module docstring). ``primary``: the primary task's name;
    ``chance``: its chance-level loss value or None (no such check); ``meta_grad_clip``: the
    learner's clip or None. ``state`` (the fired flags and counters) is saved in checkpoints."""

    def __init__(
        self,
        primary: str,
        chance: float | None,
        meta_grad_clip: float | None,
        patience: int = 10,
        explode_ratio: float = 100.0,
        state: dict | None = None,
    ) -> None:
        self.primary, self.chance, self.meta_grad_clip = primary, chance, meta_grad_clip
        self.patience, self.explode_ratio = patience, explode_ratio
        self.state = state if state is not None else {}
        self.state.setdefault("fired", [])
        self.state.setdefault("at_chance", 0)
        self.state.setdefault("clipped", 0)

    def _fire(self, flag: str, message: str) -> None:
        if flag not in self.state["fired"]:
            self.state["fired"].append(flag)
            warnings.warn(f"training health: {message}", stacklevel=3)

    def check(self, step: int, record: Mapping[str, float]) -> dict[str, float]:
        """Update the checks with one log record; return the ``health/*`` flags to log."""
        loss = record.get(f"loss/{self.primary}")
        if self.chance is not None and loss is not None:
            near = math.isfinite(loss) and abs(loss - self.chance) <= 0.02 * self.chance
            self.state["at_chance"] = self.state["at_chance"] + 1 if near else 0
            if self.state["at_chance"] >= self.patience:
                self._fire(
                    "primary_at_chance",
                    f"the primary loss {self.primary} has stayed at its chance value "
                    f"{self.chance:.3f} for {self.state['at_chance']} log records (step {step}): "
                    "the target task is not being learned (learning rate, temperature, data?)",
                )
        meta = record.get("meta_loss")
        losses = sum(v for k, v in record.items() if k.startswith("loss/") and math.isfinite(v))
        if meta is not None and math.isfinite(meta):
            if meta < 0:
                self._fire("meta_loss_negative", f"the meta loss M = {meta:.4g} < 0 at step {step}")
            if abs(meta) > self.explode_ratio * max(losses, 1e-12):
                self._fire(
                    "meta_loss_exploding",
                    f"|M| = {abs(meta):.4g} exceeds {self.explode_ratio:g} x the sum of the task "
                    f"losses ({losses:.4g}) at step {step}",
                )
        norm = record.get("meta/hypergrad_norm")
        if norm is not None and self.meta_grad_clip is not None:
            clipped = not math.isfinite(norm) or norm > self.meta_grad_clip
            self.state["clipped"] = self.state["clipped"] + 1 if clipped else 0
            if self.state["clipped"] >= self.patience:
                self._fire(
                    "hypergrad_always_clipped",
                    f"the hypergradient norm exceeded MetaLearner.meta_grad_clip = "
                    f"{self.meta_grad_clip:g} in the last {self.state['clipped']} log records "
                    f"(step {step}, norm {norm:.4g}): the clip, not the hypergradient, sets the "
                    "meta step",
                )
        return {f"health/{flag}": float(flag in self.state["fired"]) for flag in FLAGS}
