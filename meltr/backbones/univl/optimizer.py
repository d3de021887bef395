"""``BertAdam``: the optimizer UniVL (and MELTR's UniVL) fine-tunes with.

The release's ``BertAdam`` (``modules/optimization.py``, from pytorch-pretrained-bert) differs from
``torch.optim.AdamW`` in two ways, both kept here:

- no bias correction: the step is ``m / (sqrt(v) + eps)`` with the raw moving averages;
- the weight decay is added to that step, ``update = m / (sqrt(v) + eps) + weight_decay * p``,
  then ``p -= lr * update`` (decoupled, and scaled by the learning rate).

Gradient clipping: the release's training loops (UniVL's and MELTR's) clip the norm of all
gradients together to 1.0 before ``optimizer.step()``, and its ``BertAdam`` then clips every
tensor to norm ``max_grad_norm`` (1.0) on its own, which after the first clip changes nothing.
Here ``step()`` does the first: the norm over all the optimizer's gradients is clipped to
``max_grad_norm`` before the moments are updated.

The release builds the parameter groups from names: no weight decay for ``bias`` and
``LayerNorm`` parameters. The training system hands an optimizer ``model.parameters()`` without
names, so the rule here is by shape: tensors with fewer than two dimensions get no weight decay.
For UniVL the two rules pick the same tensors (every bias and LayerNorm parameter is a vector,
every other parameter a matrix) but one: the release also decays the weight of
``normalize_video.visual_norm2d``, a LayerNorm whose name lacks "LayerNorm"; here it is not
decayed. The release's learning-rate schedule lives in the optimizer; here it is the recipe's
``Recipe.lr_schedule`` (``warmup_linear_schedule``), which scales the groups' ``lr``. Its first
update runs at ``lr / warmup_steps``, the release's at 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction, decoupled weight decay on matrices only, clipping of the
    global gradient norm (module docstring). ``betas``, ``eps``, ``weight_decay`` and
    ``max_grad_norm`` default to the release's (0.9, 0.999), 1e-6, 0.01 and 1.0;
    ``max_grad_norm`` (over all groups) <= 0 turns clipping off."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        max_grad_norm: float = 1.0,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not all(0.0 <= beta < 1.0 for beta in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas}")
        if not eps >= 0.0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(
            params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        )
        self.max_grad_norm = float(max_grad_norm)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with_grad = [
            p for group in self.param_groups for p in group["params"] if p.grad is not None
        ]
        if any(p.grad.is_sparse for p in with_grad):
            raise RuntimeError("BertAdam does not support sparse gradients")
        if self.max_grad_norm > 0 and with_grad:
            torch.nn.utils.clip_grad_norm_(with_grad, self.max_grad_norm)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                grad = parameter.grad
                state = self.state[parameter]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(parameter)
                    state["exp_avg_sq"] = torch.zeros_like(parameter)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
                if group["weight_decay"] > 0 and parameter.dim() >= 2:
                    update.add_(parameter, alpha=group["weight_decay"])
                parameter.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss
