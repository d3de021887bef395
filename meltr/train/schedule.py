"""Learning-rate schedule: linear warmup, then linear decay towards zero."""

from __future__ import annotations

import torch


class WarmupLinearDecay:
    """LR multiplier for update ``step`` (0-based) of ``total_steps`` updates.

    ``(step + 1) / warmup_steps`` during the first ``warmup_steps`` updates, then
    ``(total_steps - step) / (total_steps - warmup_steps)``: 1 at the first update after warmup,
    ``1 / (total_steps - warmup_steps)`` at the last one. No update runs with a zero learning rate.
    A plain object (not a lambda) so LambdaLR's state_dict saves and restores it.
    """

    def __init__(self, total_steps: int, warmup_steps: int):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}"
            )
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return max(0.0, (self.total_steps - step) / (self.total_steps - self.warmup_steps))


def warmup_linear_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Scheduler scaling every param group's base lr by WarmupLinearDecay.

    ``warmup_steps = round(warmup_fraction * total_steps)``. Call ``.step()`` once after each
    update; the optimizer's lr is set for update 0 on construction.
    """
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    multiplier = WarmupLinearDecay(total_steps, round(warmup_fraction * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def multistep_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    milestones: tuple[float, ...] = (0.5, 0.75),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.MultiStepLR:
    """Scheduler multiplying every base lr by ``gamma`` at each milestone, given as fractions of
    ``total_steps`` (the usual CIFAR schedule: x0.1 at 50 % and 75 % of training)."""
    if not all(0.0 < fraction < 1.0 for fraction in milestones):
        raise ValueError(f"milestones must be fractions in (0, 1), got {milestones}")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    steps = sorted(round(fraction * total_steps) for fraction in milestones)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=steps, gamma=gamma)


def constant_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Scheduler keeping every param group's base lr for all ``total_steps`` updates."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, ConstantMultiplier())


class ConstantMultiplier:
    """LR multiplier 1 for every update (a plain object, so LambdaLR's state_dict saves it)."""

    def __call__(self, step: int) -> float:
        return 1.0
