"""The MELTR release's training loop (All-in-one ``training_step``, Violet ``go_dl``, UniVL's
with the oldest batch evicted), written from its definition as a reference for the learner's
``schedule="release"`` (``tests/core/test_learner.py``) and the release recipes
(``tests/train/test_release_recipes.py``)."""

from collections.abc import Callable, Sequence

import torch
from torch import nn


def release_loop(
    model: nn.Module,
    meta: nn.Module,
    batches: Sequence,
    losses: Callable[[nn.Module, object], torch.Tensor],
    *,
    optimizer: torch.optim.Optimizer,
    meta_optimizer: torch.optim.Optimizer,
    every: int,
    replay: int,
    eviction: str,
    gamma: float,
    clip: float,
    seed: int,
) -> None:
    """Train ``model`` and ``meta`` in place on ``batches``; ``losses(model, batch)`` is the
    ``[T]`` loss vector, primary first.

    Each iteration: an inner update on ``M(l)``; at iterations 0, K, 2K: B_pri and B_aux drawn
    from the earlier batches (the current one while there are none), ``L_val = l_0(B_pri) +
    gamma |sum l(B_aux) - M(l(B_aux))|``, phi.grad = -d/dphi [dL_val/dw . dM/dw] (double
    backward; the regulariser's direct gradient in phi is not used), clipped, a meta optimizer
    step; then the batch is buffered and, beyond ``replay``, one of the older ``replay``
    evicted (the oldest, or at random with weights 1..replay). Draws follow the learner's
    documented protocol on a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    weights, phi = list(model.parameters()), list(meta.parameters())
    buffer = []
    for iteration, batch in enumerate(batches):
        optimizer.zero_grad()
        meta(losses(model, batch)).backward()
        meta.zero_grad()
        optimizer.step()
        if iteration % every == 0:
            primary = aux = batch
            if buffer:
                i, j = torch.randint(len(buffer), (2,), generator=generator).tolist()
                primary, aux = buffer[i], buffer[j]
            l_train = losses(model, aux)
            m = meta(l_train)
            val = losses(model, primary)[0] + gamma * (l_train.sum() - m).abs()
            d_val = torch.autograd.grad(val, weights, retain_graph=True)
            d_train = torch.autograd.grad(m, weights, create_graph=True)
            v4 = torch.autograd.grad(d_train, phi, grad_outputs=d_val, allow_unused=True)
            meta_optimizer.zero_grad()
            for p, g in zip(phi, v4, strict=True):
                p.grad = None if g is None else -g
            nn.utils.clip_grad_norm_(phi, clip)
            meta_optimizer.step()
        buffer.append(batch)
        if len(buffer) > replay:
            if eviction == "oldest":
                buffer.pop(0)
            else:
                weights_ = torch.arange(1.0, replay + 1, dtype=torch.float64)
                buffer.pop(int(torch.multinomial(weights_, 1, generator=generator)))
