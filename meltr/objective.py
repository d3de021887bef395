"""Reproducible evaluation of a loss source: the task-loss vector of one batch as a function of w.

Hypergradients evaluate the same batch several times (perturbed weights, functional weights).
Every evaluation must see the same dropout and masking draws, so a ``PinnedLosses`` captures the
global RNG state once and replays it before each evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

LossSource = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]

RngState = tuple[torch.Tensor, list[torch.Tensor] | None]


def capture_rng() -> RngState:
    """The global CPU RNG state, and every CUDA device's when CUDA has been initialised."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def restore_rng(state: RngState) -> None:
    """Set the global RNG(s) back to a state from ``capture_rng``."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Run attention through differentiable-everywhere math kernels.

    Selects the math kernel of ``F.scaled_dot_product_attention`` and turns off the
    ``nn.MultiheadAttention`` fast path (restored on exit): fused kernels have neither
    double-backward nor forward-mode rules.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def stack_losses(losses: Mapping[str, torch.Tensor], keys: Sequence[str]) -> torch.Tensor:
    """Stack a loss source's output into a ``[T]`` vector in the order of ``keys``.

    Raises ValueError when the keys differ from ``keys`` (naming both lists) or a loss is not
    a scalar tensor (naming its key and type or shape).
    """
    if list(losses.keys()) != list(keys):
        raise ValueError(
            f"loss source returned keys {list(losses.keys())}, expected {list(keys)} "
            "(same keys in the same order on every call)"
        )
    for key, value in losses.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"loss {key!r} is a {type(value).__name__}, not a tensor: a loss source must "
                "return tensors computed from the model (with their autograd graph)"
            )
        if value.numel() != 1:
            raise ValueError(f"loss {key!r} must be a scalar, got shape {tuple(value.shape)}")
    return torch.stack([losses[key].reshape(()) for key in keys])


class _LossModule(nn.Module):
    """Wraps ``loss_source(model, batch)`` as a module so ``torch.func.functional_call`` can
    substitute the model's parameters across every ``model(...)`` call the source makes."""

    def __init__(self, model: nn.Module, evaluate: Callable[[nn.Module], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self._evaluate = evaluate

    def forward(self) -> torch.Tensor:
        return self._evaluate(self.model)


class PinnedLosses:
    """The ``[T]`` loss vector of one batch, with the global RNG replayed on every evaluation.

    ``rng`` is the state the evaluations start from (default: the state at construction). Each
    call leaves the global RNG advanced exactly as the loss source advances it; callers that
    must leave no trace restore it themselves.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_source: LossSource,
        batch: Any,
        keys: Sequence[str],
        rng: RngState | None = None,
    ) -> None:
        self.model = model
        self.loss_source = loss_source
        self.batch = batch
        self.keys = list(keys)
        self.rng = capture_rng() if rng is None else rng

    def _evaluate(self, model: nn.Module) -> torch.Tensor:
        restore_rng(self.rng)
        return stack_losses(self.loss_source(model, self.batch), self.keys)

    def __call__(self) -> torch.Tensor:
        """Losses at the model's live parameters (graph recorded if grad mode is on)."""
        return self._evaluate(self.model)

    def without_graph(self) -> torch.Tensor:
        """Losses at the model's live parameters without a graph, leaving no trace (the global
        RNG and the model's buffers are restored)."""
        with torch.no_grad(), without_side_effects(self.model):
            return self().detach()

    def on(self, batch: Any) -> PinnedLosses:
        """The same loss function on another batch, its RNG state pinned now."""
        return PinnedLosses(self.model, self.loss_source, batch, self.keys)

    def at(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Losses with the named parameters replaced by ``params`` (``torch.func`` compatible).

        Buffers are replaced by fresh copies made inside the call: modules that update buffers
        in place (BatchNorm) then mutate tensors local to any enclosing ``torch.func`` transform,
        and the live buffers are left untouched.
        """
        wrapper = _LossModule(self.model, self._evaluate)
        named = {f"model.{name}": value for name, value in params.items()}
        named |= {f"model.{name}": b.clone() for name, b in self.model.named_buffers()}
        return torch.func.functional_call(wrapper, named, ())


@dataclass
class Pass:
    """One evaluation of a batch with a graph: the pinned loss function, its ``[T]`` losses and
    the task losses as the loss source returned them (a backward from one of them traverses that
    task's graph only; a backward through ``values`` traverses all, with zero gradients).

    ``graph_needed``: the training step's own pass, whose graph its inner update backpropagates
    through later (a backward taken earlier must keep it). ``task_gradients``: the per-task
    gradients ``[dl_t/dw for t]`` once a hypergradient has taken them from this pass (freeing
    its graph where tasks do not share it); the inner update on this pass combines them instead
    of a backward of its own.
    """

    losses: PinnedLosses
    values: torch.Tensor
    tasks: list[torch.Tensor]
    graph_needed: bool = False
    task_gradients: list[list[torch.Tensor]] | None = None


def evaluate(
    model: nn.Module, loss_source: LossSource, batch: Any, keys: Sequence[str] | None
) -> Pass:
    """``loss_source(model, batch)`` with a graph, the global RNG state pinned first, as a pass
    whose losses are in the order of ``keys`` (None: the loss source's own order)."""
    rng = capture_rng()
    raw = loss_source(model, batch)
    keys = list(raw.keys()) if keys is None else list(keys)
    values = stack_losses(raw, keys)
    pinned = PinnedLosses(model, loss_source, batch, keys, rng)
    return Pass(pinned, values, [raw[key].reshape(()) for key in keys])


def evaluate_pair(
    forward: Callable[[Any], Pass], primary_batch: Any, aux_batch: Any, current: Pass | None
) -> tuple[Pass, Pass]:
    """The passes of two batches by ``forward``, primary first, one pass when they are the same
    object; ``current`` (a pass at the current weights) serves either side whose batch is its
    batch instead of a new forward."""

    def evaluated(batch: Any) -> Pass:
        if current is not None and batch is current.losses.batch:
            return current
        return forward(batch)

    primary = evaluated(primary_batch)
    return primary, primary if aux_batch is primary_batch else evaluated(aux_batch)


def check_keys(first: Pass, num_tasks: int | None) -> list[str]:
    """The loss keys of a loss source's first pass, once they are known to be usable:
    ValueError unless the losses depend on the trainable parameters (when grad mode is on) and
    their number is ``num_tasks`` (the meta loss's, when it has one)."""
    keys = first.losses.keys
    if torch.is_grad_enabled() and not any(task.requires_grad for task in first.tasks):
        raise ValueError(
            f"none of the losses {keys} depends on the model's trainable parameters "
            "(no autograd graph): compute them from model(...) outputs, with grad enabled"
        )
    if num_tasks is not None and num_tasks != len(keys):
        raise ValueError(
            f"meta loss has num_tasks={num_tasks} but the loss source returned "
            f"{len(keys)} losses {keys}"
        )
    return keys


@contextlib.contextmanager
def without_side_effects(model: nn.Module) -> Iterator[None]:
    """Restore the global RNG(s) and ``model``'s buffers on exit."""
    rng = capture_rng()
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        # Through ``.data``: a bit-exact restore must not bump the buffers' autograd version
        # counters, or the training step's recorded graph (which saved them) would be refused.
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.data.copy_(saved)
        restore_rng(rng)
