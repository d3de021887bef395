"""The rows of ``tools/bench_scale.py`` (a plain step, the release's hypergradient, the learner's
hypergradients) and the context they run in (device, bf16 autocast, attention kernel)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import meltr
from meltr.benchmarks.common import GAMMA, peak_allocated_mb
from meltr.benchmarks.workloads import Workload
from meltr.objective import math_attention
from meltr.solvers import ConjugateGradient, Identity, Neumann


@dataclass(frozen=True)
class Setup:
    """Where and how the rows run: the device, bf16 autocast or not, the attention kernel
    (``"default"`` or a key of ``SDPA_BACKENDS``)."""

    device: torch.device
    bf16: bool
    sdpa: str

    def context(self, math: bool = False) -> contextlib.AbstractContextManager:
        """Autocast (``--bf16``) and the attention kernel (``--sdpa``; math for ``math``)."""
        stack = contextlib.ExitStack()
        if self.bf16:
            stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16))
        if math:
            stack.enter_context(math_attention())
        elif self.sdpa != "default":
            stack.enter_context(sdpa_kernel(SDPA_BACKENDS[self.sdpa]))
        return stack

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def peak_mb(setup: Setup, fn: Callable[[], object]) -> float:
    """Peak MiB of tensors allocated by ``fn()`` and alive at once (CPU: the profiler's
    allocator events; CUDA: ``max_memory_allocated`` over what was allocated before)."""
    if setup.device.type != "cuda":
        return peak_allocated_mb(fn)
    setup.synchronize()
    torch.cuda.reset_peak_memory_stats(setup.device)
    before = torch.cuda.memory_allocated(setup.device)
    fn()
    setup.synchronize()
    return (torch.cuda.max_memory_allocated(setup.device) - before) / 2**20


ROW_NAMES = {
    "plain": "plain training step",
    "release": "release recipe (double backward, H^-1 = I, math attention)",
    "central": "Identity + finite_difference (central)",
    "one_sided": "Identity + finite_difference_one_sided",
    "task_gradients": "Identity + task_gradients",
    "neumann": "Neumann(3) + finite_difference",
    "cg": "ConjugateGradient(5) + finite_difference",
}
HEAVY_ROWS = ("neumann", "cg")


def make_learner(
    workload: Workload, meta: nn.Module, solver: object, products: str
) -> meltr.MetaLearner:
    """A learner over the workload whose optimizers have learning rate 0 (no row changes the
    problem)."""
    return meltr.MetaLearner(
        workload.model,
        meta,
        workload.loss_source,
        torch.optim.AdamW(workload.model.parameters(), lr=0.0),
        torch.optim.Adam(meta.parameters(), lr=0.0),
        solver=solver,
        products=products,
        gamma=GAMMA,
    )


def release_hypergradient(
    workload: Workload, meta: nn.Module, primary_batch: Any, aux_batch: Any
) -> list[torch.Tensor]:
    """The release's hypergradient (``-v4`` of ``MELTRgrad.grad``, the regularizer's direct
    term dropped), written from its definition: ``L_val = l_0(B_pri) + gamma |sum l - M|`` on
    the aux losses, ``d/dphi [dL_val/dw . dM/dw]`` by double backward."""
    weights = [p for p in workload.model.parameters() if p.requires_grad]
    phi = list(meta.parameters())
    primary = next(iter(workload.primary_source(workload.model, primary_batch).values()))
    train = torch.stack(list(workload.loss_source(workload.model, aux_batch).values()))
    meta_value = meta(train.to(next(meta.parameters()).dtype))
    val = primary + GAMMA * (train.sum() - meta_value).abs()
    d_val = torch.autograd.grad(val, weights, retain_graph=True, allow_unused=True)
    d_train = torch.autograd.grad(meta_value, weights, create_graph=True, allow_unused=True)
    pairs = [(t, a) for t, a in zip(d_train, d_val, strict=True) if t is not None and a is not None]
    grads = torch.autograd.grad(
        [t for t, _ in pairs],
        phi,
        grad_outputs=[a for _, a in pairs],
        allow_unused=True,
        materialize_grads=True,
    )
    return [-g for g in grads]


def make_rows(workload: Workload, setup: Setup, rows: Sequence[str]) -> dict[str, Callable]:
    """``{row: fn}`` where ``fn()`` runs the row once in its context."""
    model, batch = workload.model, workload.make_batch(0)
    meta = meltr.MetaLossTransformer(workload.num_tasks).to(setup.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    solvers = {
        "central": (Identity(), "finite_difference"),
        "one_sided": (Identity(), "finite_difference_one_sided"),
        "task_gradients": (Identity(), "task_gradients"),
        "neumann": (Neumann(steps=3, alpha=1.0), "finite_difference"),
        "cg": (ConjugateGradient(maxiter=5, tol=0.0), "finite_difference"),
    }

    def plain() -> None:
        with setup.context():
            sum(workload.loss_source(model, batch).values()).backward()
        optimizer.step()

    def release() -> None:
        with setup.context(math=True):
            release_hypergradient(workload, meta, batch, batch)

    def hypergradient(learner: meltr.MetaLearner) -> None:
        with setup.context():
            learner.hypergradient(batch, batch)

    available: dict[str, Callable] = {"plain": plain, "release": release}
    for name, (solver, products) in solvers.items():
        available[name] = partial(hypergradient, make_learner(workload, meta, solver, products))
    return {name: available[name] for name in rows}
