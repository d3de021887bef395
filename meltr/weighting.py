"""Baseline loss combiners with the meta-loss interface, to compare MELTR against.

Each combiner is an ``nn.Module`` mapping task losses ``[T]`` (primary first; ``[B, T]`` also
accepted, giving ``[B]``) to a scalar ``M(l)``, twice differentiable in its input, with a
``num_tasks`` attribute. They are used in ``meltr.MetaLearner`` with ``meta_optimizer=None``:
the learner descends ``M(l(w))`` in w, and combiners with state update it in
``after_update(losses, recompute)``, which the learner calls after every applied inner update
with the detached ``[T]`` losses the update descended and a function returning the losses of
the same batch at the updated weights (one forward, no graph).

- ``FixedWeights``: ``M = sum_t weight_t l_t``, a fixed vector ("primary", "sum" or given).
- ``UncertaintyWeighting`` (Kendall, Gal & Cipolla 2018): ``M = sum_t exp(-s_t) l_t + s_t``.
- ``DynamicWeightAverage`` (Liu, Johns & Davison 2019): weights from the ratio of the last two
  windows' mean losses.
- ``RandomLossWeighting`` (Lin et al. 2022): ``weight = softmax(z)``, ``z ~ N(0, I)`` per step.
- ``FAMO`` (Liu et al. 2023): ``M = c * sum_t z_t log(l_t - l*_t + eps)`` with ``c`` held
  constant, logits updated from the per-step decrease of the log-losses.

Their parameters are frozen (``requires_grad=False``): they change only in ``after_update``,
never through a meta optimizer (``MetaLearner`` reads the meta loss's dtype from its first
parameter, so every combiner has one). All state is in parameters and buffers, so
``state_dict()`` round-trips it and a resumed run continues bit-exactly; the only randomness
(RLW) comes from a generator whose state is a buffer, never from the global RNG (which the
learner replays for its perturbed passes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from meltr.meta_loss import LinearMetaLoss, _check_losses

Recompute = Callable[[], torch.Tensor]
RULES = ("sgd", "adam")
ADAM_EPS = 1e-8


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_positive(name: str, value: object) -> None:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_num_tasks(num_tasks: object) -> None:
    if not isinstance(num_tasks, int) or isinstance(num_tasks, bool) or num_tasks < 1:
        raise ValueError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")


class _TensorOptimizer(nn.Module):
    """Steps one ``[T]`` tensor in place with plain SGD or Adam, the state in buffers.

    ``rule="sgd"``: ``x <- x - lr * (g + weight_decay * x)``. ``rule="adam"``: the update of
    ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient, bias-corrected moments,
    eps 1e-8), so that a combiner's own rule equals training its tensor with that optimizer.
    """

    def __init__(
        self,
        size: int,
        rule: str,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
    ) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"optimizer must be one of {RULES}, got {rule!r}")
        _check_positive("lr", lr)
        if not _is_number(weight_decay) or not math.isfinite(weight_decay) or weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        if len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.rule = rule
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.weight_decay = float(weight_decay)
        self.register_buffer("exp_avg", torch.zeros(size))
        self.register_buffer("exp_avg_sq", torch.zeros(size))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def step(self, tensor: torch.Tensor, grad: torch.Tensor) -> None:
        """One update of ``tensor`` (mutated) along ``grad``; advances the moments."""
        grad = grad.to(tensor)
        if self.weight_decay:
            grad = grad + self.weight_decay * tensor
        self.steps += 1
        if self.rule == "sgd":
            tensor.sub_(self.lr * grad)
            return
        beta1, beta2 = self.betas
        steps = int(self.steps)
        self.exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denominator = (self.exp_avg_sq.sqrt() / math.sqrt(1 - beta2**steps)).add_(ADAM_EPS)
        tensor.addcdiv_(self.exp_avg, denominator, value=-self.lr / (1 - beta1**steps))


class FixedWeights(LinearMetaLoss):
    """``M(l) = sum_t weight_t * l_t`` with a fixed ``weight`` (frozen).

    ``weights``: ``"primary"`` (``[1, 0, ..., 0]``, fine-tuning on the primary task alone),
    ``"sum"`` (all ones, plain multi-task learning), one number for every task, or a sequence
    of ``num_tasks`` numbers. ``aux_weight``, if given, instead weighs the primary task 1 and
    every auxiliary task ``aux_weight`` (one knob for any number of tasks, to tune on val).
    """

    PRESETS = ("primary", "sum")

    def __init__(
        self,
        num_tasks: int,
        weights: str | float | Sequence[float] = "sum",
        aux_weight: float | None = None,
    ) -> None:
        _check_num_tasks(num_tasks)
        if aux_weight is not None:
            if weights != "sum":
                raise ValueError(f"give weights or aux_weight, not both (weights={weights!r})")
            if not _is_number(aux_weight) or not math.isfinite(aux_weight):
                raise ValueError(f"aux_weight must be a finite number, got {aux_weight!r}")
            weights = [1.0] + [float(aux_weight)] * (num_tasks - 1)
        if isinstance(weights, str):
            if weights not in self.PRESETS:
                raise ValueError(
                    f"weights must be one of {self.PRESETS}, a number or {num_tasks} numbers, "
                    f"got {weights!r}"
                )
            weights = [1.0] + [0.0] * (num_tasks - 1) if weights == "primary" else 1.0
        elif not _is_number(weights) and len(weights) != num_tasks:
            raise ValueError(
                f"FixedWeights got {len(weights)} weights {list(weights)} for num_tasks={num_tasks}"
            )
        super().__init__(num_tasks, init=weights)
        self.weight.requires_grad_(False)


class UncertaintyWeighting(nn.Module):
    """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    ``M(l) = sum_t exp(-s_t) * l_t + s_t`` with log-variances ``s = log sigma^2``
    (``log_variance``, ``[T]``, initialised at ``init``). This is twice the paper's Gaussian
    form ``1/(2 sigma^2) L + log sigma`` (Eq. 7; Eq. 10 uses ``1/sigma^2`` for a classification
    term) for every task, as in the authors' example code: the weights start at 1, as in the
    plain sum, and s has the same stationary point ``s_t = log l_t``.

    ``dM/ds_t = 1 - exp(-s_t) l_t`` depends only on the observed losses, so s is trained
    jointly with w by stepping it in ``after_update`` with that gradient at the losses the
    update descended (the simultaneous step of joint training), with ``optimizer`` ``"adam"``
    or ``"sgd"`` at ``lr`` (defaults: Adam at 0.025, the task-weight learning rate of the
    Nash-MTL / FAMO benchmark code).
    """

    def __init__(
        self,
        num_tasks: int,
        init: float = 0.0,
        optimizer: str = "adam",
        lr: float = 0.025,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        _check_num_tasks(num_tasks)
        if not _is_number(init) or not math.isfinite(init):
            raise ValueError(f"init must be a finite number, got {init!r}")
        self.num_tasks = num_tasks
        self.log_variance = nn.Parameter(torch.full((num_tasks,), float(init)), False)
        self.rule = _TensorOptimizer(num_tasks, optimizer, lr, betas, weight_decay)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        """losses ``[T]`` or ``[B, T]`` -> ``[]`` or ``[B]``."""
        _check_losses(losses, self.num_tasks)
        s = self.log_variance
        return (torch.exp(-s) * losses + s).sum(dim=-1)

    @torch.no_grad()
    def after_update(self, losses: torch.Tensor, recompute: Recompute) -> None:
        """One step of s along ``dM/ds`` at ``losses`` (``[T]``); ``recompute`` is not used."""
        s = self.log_variance
        self.rule.step(s, 1.0 - torch.exp(-s) * losses.to(s))


class DynamicWeightAverage(LinearMetaLoss):
    """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, Eq. 7), ``M = sum_t w_t l_t``.

    The paper's epochs are windows of ``window`` applied updates here. ``L_t(k)`` is the mean
    over window k of the losses the updates descended (the paper's per-epoch average training
    loss). During window k the weights are ``w = T * softmax(r / temperature)`` with
    ``r_t = L_t(k-1) / L_t(k-2)``, and all ones during the first two windows. The losses must
    be positive. State (buffers): the current window's sum and step count, the means of the
    last two windows, the number of completed windows; the weights (``weight``, frozen).
    """

    def __init__(self, num_tasks: int, window: int = 100, temperature: float = 2.0) -> None:
        _check_num_tasks(num_tasks)
        super().__init__(num_tasks, init=1.0)
        self.weight.requires_grad_(False)
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        _check_positive("temperature", temperature)
        self.window = window
        self.temperature = float(temperature)
        self.register_buffer("window_sum", torch.zeros(num_tasks))
        self.register_buffer("window_steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("window_means", torch.zeros(2, num_tasks))  # [L(k-2), L(k-1)]
        self.register_buffer("windows_done", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def after_update(self, losses: torch.Tensor, recompute: Recompute) -> None:
        """Accumulate ``losses`` (``[T]``); at the end of a window, set the next weights."""
        self.window_sum += losses.to(self.window_sum)
        self.window_steps += 1
        if int(self.window_steps) < self.window:
            return
        mean = self.window_sum / self.window
        bad = [t for t, m in enumerate(mean.tolist()) if not (math.isfinite(m) and m > 0)]
        if bad:
            raise ValueError(
                f"DynamicWeightAverage needs positive losses: window {int(self.windows_done)} "
                f"has mean losses {mean.tolist()} (tasks {bad})"
            )
        self.window_means.copy_(torch.stack([self.window_means[1], mean]))
        self.window_sum.zero_()
        self.window_steps.zero_()
        self.windows_done += 1
        if int(self.windows_done) >= 2:
            ratio = self.window_means[1] / self.window_means[0]
            weight = self.num_tasks * torch.softmax(ratio / self.temperature, dim=-1)
            self.weight.copy_(weight)


class RandomLossWeighting(LinearMetaLoss):
    """Random Loss Weighting (Lin et al., TMLR 2022), ``M = sum_t w_t l_t``.

    ``w = softmax(z)``, ``z ~ N(0, I_T)`` (the paper's default distribution, unit scale; the
    weights sum to 1), drawn anew after every applied update from a generator seeded with
    ``seed`` whose state is the buffer ``generator_state`` (the global RNG is never used). The
    first draw gives the weights of the first step.
    """

    def __init__(self, num_tasks: int, seed: int = 0) -> None:
        _check_num_tasks(num_tasks)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        super().__init__(num_tasks, init=1.0)
        self.weight.requires_grad_(False)
        self.register_buffer("generator_state", torch.Generator().manual_seed(seed).get_state())
        self._draw()

    @torch.no_grad()
    def _draw(self) -> None:
        generator = torch.Generator()
        generator.set_state(self.generator_state.cpu())
        draws = torch.randn(self.num_tasks, generator=generator, dtype=self.weight.dtype)
        self.weight.copy_(torch.softmax(draws, dim=-1))
        self.generator_state.copy_(generator.get_state())

    def after_update(self, losses: torch.Tensor, recompute: Recompute) -> None:
        """Draw the weights of the next step (``losses`` and ``recompute`` are not used)."""
        self._draw()


class FAMO(nn.Module):
    """Fast Adaptive Multitask Optimization (Liu, Liu, Jin, Stone & Liu, NeurIPS 2023).

    With logits ``xi`` (``logits``, ``[T]``, zeros at start), ``z = softmax(xi)`` and the
    shifted losses ``d_t = l_t - l*_t + epsilon`` (``min_losses`` l*, default 0, as in the
    official code; ``epsilon`` 1e-8)::

        M(l) = c * sum_t z_t log d_t,     c = (sum_t z_t / d_t)^-1 held constant,

    so ``dM/dl_t = c z_t / d_t`` and the inner update is ``w <- w - lr * sum_t c z_t / d_t *
    grad l_t`` (Algorithm 1). No potential has that gradient, hence the constant c; the value
    M is the paper's (and official code's) loss, not a sum of losses.

    ``after_update`` takes ``delta = log d(w_t) - log d(w_{t+1})`` on the same batch
    (``recompute``) and steps xi along ``J_z(xi)^T delta = z * (delta - z . delta)`` with the
    L2 decay ``weight_decay`` (gamma): ``optimizer="adam"`` as in the official code (Adam with
    ``weight_decay=gamma``), or ``"sgd"``, Algorithm 1's ``xi <- xi - lr (g + gamma xi)``.
    Defaults: lr (beta) 0.025 and gamma 1e-3, as in the official run scripts for NYU-v2, CelebA
    and QM9 (CityScapes and the standalone ``famo.py`` use 1e-2). Losses must stay above
    ``min_losses - epsilon``.
    """

    def __init__(
        self,
        num_tasks: int,
        optimizer: str = "adam",
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        min_losses: float | Sequence[float] = 0.0,
        epsilon: float = 1e-8,
    ) -> None:
        super().__init__()
        _check_num_tasks(num_tasks)
        if not _is_number(epsilon) or not math.isfinite(epsilon) or epsilon < 0:
            raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
        floor = (
            torch.full((num_tasks,), float(min_losses))
            if _is_number(min_losses)
            else torch.tensor([float(x) for x in min_losses])
        )
        if floor.shape != (num_tasks,) or not bool(torch.isfinite(floor).all()):
            raise ValueError(
                f"min_losses must be one finite number or {num_tasks} of them, got {min_losses!r}"
            )
        self.num_tasks = num_tasks
        self.epsilon = float(epsilon)
        self.logits = nn.Parameter(torch.zeros(num_tasks), False)
        self.register_buffer("min_losses", floor)
        self.rule = _TensorOptimizer(num_tasks, optimizer, lr, betas, weight_decay)

    def _shifted(self, losses: torch.Tensor, what: str) -> torch.Tensor:
        """``l - l* + epsilon``, checked finite and positive (``what`` names the losses)."""
        shifted = losses - self.min_losses + self.epsilon
        if not bool((torch.isfinite(shifted) & (shifted > 0)).all()):
            raise ValueError(
                f"FAMO needs finite {what} above min_losses - epsilon: got {losses.tolist()}, "
                f"min_losses {self.min_losses.tolist()}, epsilon {self.epsilon}"
            )
        return shifted

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        """losses ``[T]`` or ``[B, T]`` -> ``[]`` or ``[B]``."""
        _check_losses(losses, self.num_tasks)
        shifted = self._shifted(losses, "losses")
        z = torch.softmax(self.logits, dim=-1)
        c = 1.0 / (z / shifted).sum(dim=-1)
        return c.detach() * (z * shifted.log()).sum(dim=-1)

    @torch.no_grad()
    def after_update(self, losses: torch.Tensor, recompute: Recompute) -> None:
        """Step the logits from the log-loss decrease of the update (one extra forward)."""
        before = self._shifted(losses.to(self.logits), "losses")
        after = self._shifted(recompute().to(self.logits), "losses after the update")
        delta = before.log() - after.log()
        z = torch.softmax(self.logits, dim=-1)
        self.rule.step(self.logits, z * (delta - (z * delta).sum()))
