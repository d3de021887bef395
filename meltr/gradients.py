"""Gradients of the backbone's losses with respect to the trainable parameters.

``params`` is always the list of ``(name, parameter)`` pairs that make up ``w``. Gradients are
taken with ``backward()`` so that data-parallel wrappers (FSDP2) reduce them in their hooks; each
parameter's ``.grad`` is left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

NamedParams = Sequence[tuple[str, nn.Parameter]]


def backward_gradients(
    outputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor],
    params: NamedParams,
    retain_graph: bool = False,
) -> list[torch.Tensor]:
    """``d (sum_i grad_outputs[i] . outputs[i]) / d params`` computed with ``backward()``, zeros
    for parameters the outputs do not depend on.

    Unlike ``torch.autograd.grad`` this runs the hooks that data-parallel wrappers put on
    parameters, so under DDP / FSDP2 the result is already averaged over ranks (and, under FSDP2,
    a sharded ``DTensor`` like its parameter). Each parameter's ``.grad`` is left as it was.
    """
    tensors = [p for _, p in params]
    kept = [p.grad for p in tensors]
    for p in tensors:
        p.grad = None
    try:
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
        if pairs:
            torch.autograd.backward(
                [o for o, _ in pairs], [g for _, g in pairs], retain_graph=retain_graph
            )
        return [torch.zeros_like(p) if p.grad is None else p.grad for p in tensors]
    finally:
        for p, grad in zip(tensors, kept, strict=True):
            p.grad = grad


def _graph(output: torch.Tensor) -> tuple[set, set[int]]:
    """The autograd nodes a backward from ``output`` runs, parameters' ``AccumulateGrad``
    nodes left out, and the ids of the leaf tensors it reaches (through those nodes)."""
    seen: set = set()
    leaves: set[int] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if hasattr(node, "variable"):  # a leaf's accumulator
            leaves.add(id(node.variable))
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return seen, leaves


def reached_parameters(tasks: Sequence[torch.Tensor], params: NamedParams) -> list[list[bool]]:
    """``[[does a backward from tasks[t] reach params[i] for i] for t]``, from the graphs'
    structure (a reached parameter whose gradient happens to be zero counts as reached)."""
    leaves = [_graph(task)[1] for task in tasks]
    return [[id(p) in reached for _, p in params] for reached in leaves]


def task_gradients(
    tasks: Sequence[torch.Tensor], params: NamedParams, retain_graph: bool = False
) -> list[list[torch.Tensor]]:
    """``[d tasks[t] / d params for t]``, one ``backward`` from each scalar (see
    ``backward_gradients``). A task's graph is kept for the later tasks only where they share
    nodes (or with ``retain_graph``), so disjoint graphs are freed task by task."""
    nodes = [_graph(task)[0] for task in tasks]
    gradients = []
    for index, task in enumerate(tasks):
        later = set().union(*nodes[index + 1 :])
        retain = retain_graph or not nodes[index].isdisjoint(later)
        gradients.append(
            backward_gradients([task], [torch.ones_like(task)], params, retain_graph=retain)
        )
    return gradients


def combine(
    coefficients: Sequence[float], gradients: Sequence[Sequence[torch.Tensor]]
) -> list[torch.Tensor]:
    """``sum_t coefficients[t] * gradients[t]`` (new tensors)."""
    total = torch._foreach_mul(list(gradients[0]), float(coefficients[0]))
    for coefficient, gradient in zip(coefficients[1:], gradients[1:], strict=True):
        torch._foreach_add_(total, list(gradient), alpha=float(coefficient))
    return total
