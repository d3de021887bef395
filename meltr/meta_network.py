"""The meta loss ``M(l; phi)`` as the learner evaluates and differentiates it.

The meta network is tiny, and its first and second derivatives (recorded in backward with
``create_graph``) feed the hypergradient, so it always computes in its own precision: autocast is
off on its device even inside the caller's autocast region, and the losses are cast to its dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn


class MetaNetwork:
    """``module`` (the meta loss: ``[T]`` losses -> scalar) with the derivatives the learner
    needs. Holds no state of its own; ``module``'s parameters are phi."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def precision(self) -> contextlib.AbstractContextManager:
        """Autocast off on the meta network's device."""
        return torch.autocast(next(self.module.parameters()).device.type, enabled=False)

    def __call__(self, losses: torch.Tensor) -> torch.Tensor:
        """``M(l; phi)`` with the graph to phi."""
        with self.precision():
            return self.module(losses.to(self.dtype))

    def frozen(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``M(l; phi)`` with phi detached (for products that must not touch phi)."""
        detached = {n: p.detach() for n, p in self.module.named_parameters()}

        def meta(losses: torch.Tensor) -> torch.Tensor:
            with self.precision():
                return torch.func.functional_call(self.module, detached, (losses.to(self.dtype),))

        return meta

    def value_and_derivative(
        self, values: torch.Tensor, create_graph: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``M`` and ``dM/dl`` (``[T]``) at ``values`` (detached and cast to the meta network's
        dtype first, which is what ``M`` sees); with ``create_graph`` both keep their graph to
        phi (and ``dM/dl`` its graph to the losses)."""
        losses = values.detach().to(self.dtype).requires_grad_()
        with torch.enable_grad(), self.precision():
            meta = self(losses)
            (grad,) = torch.autograd.grad(
                meta, losses, create_graph=create_graph, allow_unused=True, materialize_grads=True
            )
        return meta, grad

    def loss_derivative(self, values: torch.Tensor) -> torch.Tensor:
        """``dM/dl`` at ``values``, ``[T]``, without a graph."""
        return self.value_and_derivative(values, create_graph=False)[1]

    def phi_grads(self, objective: torch.Tensor) -> list[torch.Tensor]:
        """``d objective / d phi`` aligned with ``module.parameters()`` (zeros where unused)."""
        phi = list(self.module.parameters())
        trainable = [p for p in phi if p.requires_grad]
        grads = iter(
            torch.autograd.grad(objective, trainable, allow_unused=True, materialize_grads=True)
            if objective.requires_grad and trainable
            else [torch.zeros_like(p) for p in trainable]
        )
        return [next(grads) if p.requires_grad else torch.zeros_like(p) for p in phi]
