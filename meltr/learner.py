"""MetaLearner: the MELTR training step (inner update + periodic meta update of the meta loss).

Notation (DESIGN.md): w the model's trainable parameters, phi the meta loss's parameters,
``l(w; B)`` the ``[T]`` task-loss vector of batch B (primary task first) and
``M(l; phi)`` the meta loss. The inner update descends ``M(l(w; B); phi)`` in w. The meta
update descends ``L_pri = l_0(w; B_pri) + gamma * |M(l(w; B_aux)) - sum_t l_t(w; B_aux)|`` in
phi, with the implicit hypergradient

    dL_pri/dphi = direct - d/dphi sum_t c_t * dM/dl_t(l(w; B_aux); phi),   c_t = (dl_t/dw) . q,

where ``q ~= H^{-1} v``, ``v = dL_pri/dw``, ``H = d^2 M(l(w; B_aux)) / dw^2`` (from the solver)
and ``direct = gamma * sign(M - sum l) * dM/dphi`` (``direct_grad=True``; the reference
implementation drops it). Only the tiny meta network is differentiated twice.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from meltr.objective import (
    LossSource,
    PinnedLosses,
    capture_rng,
    math_attention,
    restore_rng,
    stack_losses,
)
from meltr.products import (
    TaskGradients,
    backward_gradients,
    combine,
    make_products,
    refuse_data_parallel,
    task_gradients,
)
from meltr.solvers import ConjugateGradient, Identity, Solver, Unrolled

Reduce = Callable[[torch.Tensor], torch.Tensor]


SCHEDULES = ("meltr", "release")
EVICTIONS = ("oldest", "weighted")

SKIP_REASONS = (
    "nonfinite_loss",  # a task loss (inner update skipped)
    "nonfinite_meta_loss",  # M or dM/dl at the step's losses (inner update skipped)
    "nonfinite_grad",  # a gradient of the weights (inner update skipped)
    "nonfinite_hypergrad",  # the hypergradient (meta update skipped)
    "nonfinite_phi",  # phi after the meta update (meta update undone)
)


class NonFiniteParametersError(RuntimeError):
    """A model parameter became non-finite in an inner update whose inputs were finite."""


def _identity_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> str | None:
    """The name of the first tensor with a non-finite entry (None entries are skipped).

    Sharded tensors (DTensor) are checked through their local shards and the verdict is agreed
    over the process group, so every rank makes the same decision (a collective when one runs).
    """
    named = [(name, t.detach()) for name, t in named if t is not None]
    if not named or _all_finite([t for _, t in named]):
        return None
    return next(name for name, t in named if not _all_finite([t]))


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    local = [t.to_local() if hasattr(t, "to_local") else t for t in tensors]
    local = [t for t in local if t.numel()]
    # The max-norm overflows for no finite value (unlike the 2-norm).
    norms = torch._foreach_norm(local, math.inf) if local else []
    device = local[0].device if local else torch.device("cpu")
    bad = torch.stack([~torch.isfinite(n) for n in norms]).any().float() if norms else None
    bad = torch.zeros((), device=device) if bad is None else bad
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return not bool(bad)


@dataclass
class _Pass:
    """One evaluation of a batch: the pinned loss function, its ``[T]`` losses (graph kept) and
    the task losses as the loss source returned them (a backward from one of them traverses that
    task's graph only; a backward through ``values`` traverses all, with zero gradients)."""

    losses: PinnedLosses
    values: torch.Tensor
    tasks: list[torch.Tensor]


@dataclass
class _Hypergradient:
    """A hypergradient, its ``L_pri`` and, when they were computed for the training step's pass
    (``products="task_gradients"`` with that pass as aux), the per-task gradients there."""

    grads: list[torch.Tensor]
    l_pri: float
    current_task_gradients: list[list[torch.Tensor]] | None = None


class MetaLearner:
    """Fine-tunes ``model`` on the meta loss ``M(l; phi)`` and meta-learns phi.

    Args:
        model: the backbone; its trainable (``requires_grad``) parameters are w.
        meta_loss: a ``MetaLossTransformer``, ``LinearMetaLoss`` or any module mapping ``[T]``
            losses to a scalar, twice differentiable in its input.
        loss_source: ``loss_source(model, batch) -> Mapping[str, Tensor]`` of scalar losses,
            primary task first, same keys on every call, deterministic given the parameters,
            the batch and the global RNG state.
        optimizer: torch optimizer over the model's parameters (inner updates).
        meta_optimizer: torch optimizer over ``meta_loss``'s parameters, or None for the
            baselines without meta-learning (no meta steps, no replay buffer).
        solver: ``meltr.solvers.Identity() | Neumann | ConjugateGradient | Unrolled``.
        products: ``"finite_difference"`` (central differences, the default),
            ``"finite_difference_one_sided"`` (one perturbed forward; reuses the aux pass's loss
            values; less accurate), ``"task_gradients"`` (exact ``c`` from one backward per
            task; cheapest when the tasks' graphs are disjoint, single process only),
            ``"forward"`` or ``"autograd"`` (see ``meltr.products``).
        meta_every: a meta update on every ``meta_every``-th call of ``step``.
        gamma: weight of the regularizer ``|M - sum_t l_t|`` in ``L_pri``.
        replay: number of recent training batches the meta step draws B_pri and B_aux from
            (independently, uniformly); 0 uses the current batch for both.
        schedule: when meta steps run and which batches they may draw.
            ``"meltr"``: before the inner update, on calls ``meta_every, 2 * meta_every, ...``
            of ``step``; the current batch joins the buffer first, so it can be drawn (its
            forward is then reused).
            ``"release"`` (the MELTR release's loop): after the inner update, at the updated
            weights, on calls ``1, meta_every + 1, 2 * meta_every + 1, ...`` (its iterations
            0, K, 2K); draws come from the earlier batches only (the current batch while the
            buffer is empty), and the current batch joins the buffer afterwards.
        eviction: which buffered batch leaves when a new one exceeds ``replay``:
            ``"oldest"`` (the UniVL release) or ``"weighted"`` (the All-in-one and Violet
            releases: one of the ``replay`` older batches at random, the i-th oldest with
            probability proportional to i).
        meta_grad_clip: max global norm of phi's gradient (None: no clipping).
        direct_grad: include the regularizer's direct ``dL_pri/dphi`` term.
        reduce: applied to the loss-derivative vector ``c`` and to each of phi's gradients
            before they are used; the seam for distributed training (e.g. an all-reduce mean).
            Default: identity. Gradients with respect to w are taken with ``backward()``, so a
            data-parallel model (FSDP2) reduces them across ranks in its hooks; a loss source
            that returns global-batch loss values (``meltr.train.distributed.
            reduced_loss_source``) then makes every quantity phi sees identical on all ranks.
        replay_seed: seed of the dedicated generator for replay draws (the global RNG is
            never used for them). Draws, in this order per step: the B_pri and B_aux indices
            as ``torch.randint(len(buffer), (2,), generator=...)`` on meta steps (none while the
            buffer is empty: ``replay=0``, or the first step under ``"release"``), then the
            evicted index as
            ``torch.multinomial(torch.arange(1., replay + 1), 1, generator=...)`` under
            ``"weighted"`` eviction.
        check_parameters: after every inner update, check that the model's parameters are
            finite and raise ``NonFiniteParametersError`` if not (one pass over the weights).
        fidelity_every: every this many meta steps (0: never), also compute a reference
            hypergradient on the same batches with ``fidelity_solver`` (default
            ``ConjugateGradient(maxiter=10, damping=1.0)``) and ``fidelity_products`` (default:
            ``products``) and report ``meta/fidelity_cosine`` (the cosine between the two) and
            ``meta/fidelity_norm_ratio`` (configured norm / reference norm): how good the
            configured solver's approximation is on this model. It changes nothing the training
            computes (the reference is taken with no side effects and not applied).
        normalize_weights: the inner update descends ``M / mean_t |dM/dl_t|`` (the divisor
            held constant) instead of M: the per-task weights ``dM/dl`` rescaled to mean
            absolute value 1, so the update is invariant to the overall scale of M and the meta
            network sets only the tasks' relative weights and signs. The fixed point of the
            inner problem, and so the implicit hypergradient's direction, is unchanged.

    Non-finite values never reach the weights: an inner update is skipped when a task loss,
    ``M``, ``dM/dl`` or a gradient is non-finite, a meta update when the hypergradient is
    non-finite or phi would become non-finite (phi and the meta optimizer are then restored).
    Skips are counted in ``skipped`` (reported as ``skipped/<reason>`` running totals);
    ``consecutive_skips`` counts inner updates skipped in a row and ``last_skip`` says what the
    latest skip was about, for the caller to warn and to stop a diverged run.

    A meta loss may keep state updated from the losses (the weighting baselines of
    ``meltr.weighting``): if it defines ``after_update(losses, recompute)``, it is called after
    every applied inner update with the detached ``[T]`` losses the update descended and a
    function returning the losses of the same batch at the updated weights (no graph).
    """

    def __init__(
        self,
        model: nn.Module,
        meta_loss: nn.Module,
        loss_source: LossSource,
        optimizer: torch.optim.Optimizer,
        meta_optimizer: torch.optim.Optimizer | None,
        solver: Solver | None = None,
        products: str = "finite_difference",
        meta_every: int = 5,
        gamma: float = 0.1,
        replay: int = 10,
        schedule: str = "meltr",
        eviction: str = "oldest",
        meta_grad_clip: float | None = 1.0,
        direct_grad: bool = True,
        reduce: Reduce | None = None,
        replay_seed: int = 0,
        check_parameters: bool = True,
        fidelity_every: int = 0,
        fidelity_solver: Solver | None = None,
        fidelity_products: str | None = None,
        normalize_weights: bool = False,
    ) -> None:
        if not _is_int(meta_every) or meta_every < 1:
            raise ValueError(f"meta_every must be an integer >= 1, got {meta_every!r}")
        if not _is_number(gamma) or not math.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
        if not _is_int(replay) or replay < 0:
            raise ValueError(f"replay must be an integer >= 0, got {replay!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {EVICTIONS}, got {eviction!r}")
        if meta_grad_clip is not None and (
            not _is_number(meta_grad_clip) or not meta_grad_clip > 0
        ):
            raise ValueError(f"meta_grad_clip must be a number > 0 or None, got {meta_grad_clip!r}")
        solver = Identity() if solver is None else solver
        if isinstance(solver, type):
            raise ValueError(
                f"solver must be an instance, got the class {solver.__name__}: "
                f"pass {solver.__name__}() (in gin: @{solver.__name__}())"
            )
        if not hasattr(solver, "solve") and not isinstance(solver, Unrolled):
            raise ValueError(f"solver must be one of meltr.solvers' classes, got {solver!r}")
        if not isinstance(meta_loss, nn.Module):
            raise ValueError(f"meta_loss must be an nn.Module, got {type(meta_loss).__name__}")
        if not _is_int(fidelity_every) or fidelity_every < 0:
            raise ValueError(f"fidelity_every must be an integer >= 0, got {fidelity_every!r}")
        self.fidelity_every = fidelity_every
        self.fidelity_solver = (
            ConjugateGradient(maxiter=10, damping=1.0)
            if fidelity_solver is None
            else fidelity_solver
        )
        self.fidelity_products = make_products(fidelity_products or products)
        self.meta_steps = 0
        self.products = make_products(products)
        self.model = model
        self.meta_loss = meta_loss
        self.loss_source = loss_source
        self.optimizer = optimizer
        self.meta_optimizer = meta_optimizer
        self.solver = solver
        self.meta_every = meta_every
        self.gamma = float(gamma)
        self.replay = replay
        self.schedule = schedule
        self.eviction = eviction
        self.meta_grad_clip = meta_grad_clip
        self.direct_grad = direct_grad
        self.reduce = _identity_reduce if reduce is None else reduce
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters (requires_grad=True)")
        self.check_parameters = check_parameters
        self.normalize_weights = bool(normalize_weights)
        self.keys: list[str] | None = None
        self.step_count = 0
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)
        self.consecutive_skips = 0
        self.last_skip: str | None = None
        self.generator = torch.Generator().manual_seed(replay_seed)
        self.buffer: collections.deque = collections.deque()

    # ------------------------------------------------------------------ evaluation helpers

    @property
    def _meta_dtype(self) -> torch.dtype:
        return next(self.meta_loss.parameters()).dtype

    def _meta_precision(self) -> contextlib.AbstractContextManager:
        """Autocast off on the meta network's device: it is tiny, and its first and second
        derivatives (recorded in backward with ``create_graph``) feed the hypergradient, so it
        computes in its own precision even inside the caller's autocast region."""
        return torch.autocast(next(self.meta_loss.parameters()).device.type, enabled=False)

    def _meta(self, losses: torch.Tensor) -> torch.Tensor:
        """``M(l; phi)`` with the graph to phi."""
        with self._meta_precision():
            return self.meta_loss(losses.to(self._meta_dtype))

    def _frozen_meta(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``M(l; phi)`` with phi detached (for products that must not touch phi)."""
        detached = {n: p.detach() for n, p in self.meta_loss.named_parameters()}

        def meta(losses: torch.Tensor) -> torch.Tensor:
            with self._meta_precision():
                return torch.func.functional_call(
                    self.meta_loss, detached, (losses.to(self._meta_dtype),)
                )

        return meta

    def _set_keys(self, losses: dict) -> None:
        keys = list(losses.keys())
        stack_losses(losses, keys)  # type and shape errors name the loss
        if torch.is_grad_enabled() and not any(v.requires_grad for v in losses.values()):
            raise ValueError(
                f"none of the losses {keys} depends on the model's trainable parameters "
                "(no autograd graph): compute them from model(...) outputs, with grad enabled"
            )
        num_tasks = getattr(self.meta_loss, "num_tasks", None)
        if num_tasks is not None and num_tasks != len(keys):
            raise ValueError(
                f"meta loss has num_tasks={num_tasks} but the loss source returned "
                f"{len(keys)} losses {keys}"
            )
        self.keys = keys

    def _forward(self, batch: Any) -> _Pass:
        """Evaluate the loss source on ``batch`` with a graph, pinning the current RNG state."""
        rng = capture_rng()
        raw = self.loss_source(self.model, batch)
        if self.keys is None:
            self._set_keys(raw)
        pinned = PinnedLosses(self.model, self.loss_source, batch, self.keys, rng)
        values = stack_losses(raw, self.keys)
        return _Pass(pinned, values, [raw[key].reshape(()) for key in self.keys])

    def _loss_derivative(self, values: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """``dM/dl`` at ``values`` (detached), ``[T]``; graph to phi kept if ``create_graph``."""
        losses = values.detach().to(self._meta_dtype).requires_grad_()
        with torch.enable_grad(), self._meta_precision():
            meta = self._meta(losses)
            (grad,) = torch.autograd.grad(
                meta, losses, create_graph=create_graph, allow_unused=True, materialize_grads=True
            )
        return grad

    def _phi_grads(self, objective: torch.Tensor) -> list[torch.Tensor]:
        """``d objective / d phi`` aligned with ``meta_loss.parameters()`` (zeros where unused)."""
        phi = list(self.meta_loss.parameters())
        trainable = [p for p in phi if p.requires_grad]
        grads = iter(
            torch.autograd.grad(objective, trainable, allow_unused=True, materialize_grads=True)
            if objective.requires_grad and trainable
            else [torch.zeros_like(p) for p in trainable]
        )
        return [next(grads) if p.requires_grad else torch.zeros_like(p) for p in phi]

    @contextlib.contextmanager
    def _no_side_effects(self) -> Iterator[None]:
        """Restore the global RNG(s) and the model's buffers on exit."""
        rng = capture_rng()
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        try:
            yield
        finally:
            # Through ``.data``: a bit-exact restore must not bump the buffers' autograd version
            # counters, or the training step's recorded graph (which saved them) would be refused.
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.data.copy_(saved)
            restore_rng(rng)

    # ------------------------------------------------------------------ hypergradients

    def hypergradient(self, primary_batch: Any, aux_batch: Any) -> list[torch.Tensor]:
        """``dL_pri/dphi`` as the solver approximates it, aligned with
        ``meta_loss.parameters()`` (what the meta optimizer receives as ``.grad``).

        Changes no parameter, buffer, ``.grad``, optimizer state or global RNG state. When
        ``primary_batch is aux_batch`` the losses are computed once.
        """
        with self._no_side_effects():
            return self._hypergradient(primary_batch, aux_batch, current=None).grads

    def _hypergradient(
        self, primary_batch: Any, aux_batch: Any, current: _Pass | None
    ) -> _Hypergradient:
        """``current``, if given, is a pass whose batch object may be reused for either side
        instead of evaluating it again."""

        def evaluate(batch: Any) -> _Pass:
            if current is not None and batch is current.losses.batch:
                return current
            return self._forward(batch)

        primary = evaluate(primary_batch)
        aux = primary if aux_batch is primary_batch else evaluate(aux_batch)
        if isinstance(self.solver, Unrolled):
            return _Hypergradient(*self._unrolled_hypergradient(primary.losses, aux.losses))
        return self._implicit_hypergradient(primary, aux, current)

    def _implicit_hypergradient(
        self, primary: _Pass, aux: _Pass, current: _Pass | None
    ) -> _Hypergradient:
        """The graph of ``current`` (the training step's pass) is kept after taking v when the
        inner update still needs it; the other graphs are freed before the products."""
        params = self.params
        aux_values = aux.values.detach().to(self._meta_dtype).requires_grad_()
        with torch.enable_grad(), self._meta_precision():
            meta_aux = self._meta(aux_values)
            (dmeta_dl,) = torch.autograd.grad(
                meta_aux, aux_values, create_graph=True, allow_unused=True, materialize_grads=True
            )
        residual = meta_aux - aux_values.sum()
        sign = residual.detach().sign()
        l_pri = float(primary.values[0].detach()) + self.gamma * float(residual.detach().abs())

        # v = dL_pri/dw
        #   = grad l_0(B_pri) + gamma sign(M - sum l) sum_t (dM/dl_t - 1) grad l_t(B_aux)
        aux_coeff = (self.gamma * sign * (dmeta_dl.detach() - 1.0)).to(aux.values.dtype)
        if isinstance(self.products, TaskGradients):
            return self._task_gradient_hypergradient(
                primary, aux, current, dmeta_dl, residual, aux_coeff, l_pri
            )
        keep_graph = current is not None and (current is primary or current is aux)
        if aux is primary:
            primary_coeff = torch.zeros_like(primary.values)
            primary_coeff[0] = 1.0
            outputs, coeffs = [primary.values], [primary_coeff + aux_coeff]
        else:
            # Only l_0 of B_pri enters L_pri: backward from it alone.
            outputs = [primary.tasks[0]] + ([aux.values] if self.gamma != 0.0 else [])
            coeffs = [torch.ones_like(primary.tasks[0])] + [aux_coeff][: len(outputs) - 1]
        v = backward_gradients(outputs, coeffs, params, retain_graph=keep_graph)

        meta = self._frozen_meta()
        q = self.solver.solve(lambda x: self.products.hvp(aux.losses, params, meta, x), list(v))
        jvp = self.products.loss_jvp(aux.losses, params, q, values=aux.values.detach())
        return _Hypergradient(self._phi_hypergradient(jvp, dmeta_dl, residual), l_pri)

    def _task_gradient_hypergradient(
        self,
        primary: _Pass,
        aux: _Pass,
        current: _Pass | None,
        dmeta_dl: torch.Tensor,
        residual: torch.Tensor,
        aux_coeff: torch.Tensor,
        l_pri: float,
    ) -> _Hypergradient:
        """``products="task_gradients"``: v and c from the aux pass's per-task gradients."""
        refuse_data_parallel(self.products.name)
        params = self.params
        # The inner update takes its gradient from these when aux is the current pass; it
        # needs the current graph only when the current pass is B_pri alone.
        gradients = task_gradients(aux.tasks, params)
        coefficients = aux_coeff.tolist()
        if aux is primary:
            coefficients[0] += 1.0
            v = combine(coefficients, gradients)
        else:
            keep = current is primary
            one = torch.ones_like(primary.tasks[0])
            v = backward_gradients([primary.tasks[0]], [one], params, retain_graph=keep)
            if self.gamma != 0.0:
                torch._foreach_add_(v, combine(coefficients, gradients))
        meta = self._frozen_meta()
        q = self.solver.solve(lambda x: self.products.hvp(aux.losses, params, meta, x), v)
        jvp = self.products.loss_jvp(aux.losses, params, q, gradients=gradients)
        grads = self._phi_hypergradient(jvp, dmeta_dl, residual)
        return _Hypergradient(grads, l_pri, gradients if current is aux else None)

    def _phi_hypergradient(
        self, jvp: torch.Tensor, dmeta_dl: torch.Tensor, residual: torch.Tensor
    ) -> list[torch.Tensor]:
        """``direct - d/dphi sum_t c_t dM/dl_t`` from ``c = reduce(jvp)``."""
        c = self.reduce(jvp.to(self._meta_dtype))
        objective = -(c.detach() * dmeta_dl).sum()
        if self.direct_grad:
            objective = objective + self.gamma * residual.abs()
        with self._meta_precision():  # a backward through the meta network only
            grads = self._phi_grads(objective)
        return [self.reduce(g) for g in grads]

    def _unrolled_hypergradient(
        self, primary: PinnedLosses, aux: PinnedLosses
    ) -> tuple[list[torch.Tensor], float]:
        weights = {n: p for n, p in self.params}
        inner = self.solver.inner_weights(weights, lambda w: self._meta(aux.at(w)))
        with torch.enable_grad():
            with math_attention():
                l_pri_values = primary.at(inner)
                aux_values = l_pri_values if aux is primary else aux.at(inner)
            meta = self._meta if self.direct_grad else self._frozen_meta()
            residual = meta(aux_values) - aux_values.sum().to(self._meta_dtype)
            l_pri = l_pri_values[0].to(self._meta_dtype) + self.gamma * residual.abs()
        return [self.reduce(g) for g in self._phi_grads(l_pri)], float(l_pri.detach())

    # ------------------------------------------------------------------ training step

    def step(self, batch: Any) -> dict[str, float]:
        """One inner update of the model on ``M(l(w; batch); phi)``, with a meta update of phi
        before it (``schedule="meltr"``, every ``meta_every``-th call) or after it
        (``schedule="release"``, calls 1, ``meta_every + 1``, ...).

        A meta step whose primary and/or aux batch is the current batch at the current weights
        reuses this step's forward pass; with ``products="task_gradients"`` and this step's pass
        as aux, the inner update also reuses the meta step's per-task gradients instead of a
        backward of its own. A skipped inner update (non-finite task loss, ``M``,
        ``dM/dl`` or gradient; see the class docstring) leaves the weights and the optimizer
        untouched, runs no later meta step and keeps no batch for replay. Returns flat float
        metrics: ``loss/<task>``, ``meta_loss``, ``dM/dl/<task>``, ``skipped/<reason>`` (running
        totals) and, on meta steps, ``meta/L_pri``, ``meta/hypergrad_norm``, ``meta/seconds``.

        Raises:
            NonFiniteParametersError: ``check_parameters`` and a parameter became non-finite
                in the update (the optimizer's state is then no longer trustworthy).
        """
        self.step_count += 1
        current = self._forward(batch)
        values = current.values
        metrics = {f"loss/{k}": float(v) for k, v in zip(self.keys, values.detach(), strict=True)}
        if not bool(torch.isfinite(values).all()):
            bad = [k for k, v in zip(self.keys, values.detach(), strict=True) if not v.isfinite()]
            return metrics | self._skip("nonfinite_loss", f"task loss {', '.join(bad)}")

        meta_now = self.meta_optimizer is not None and self._is_meta_call()
        reused = None  # per-task gradients at this pass, from the meta step
        if self.meta_optimizer is not None and self.schedule == "meltr":
            if self.replay > 0:
                self._remember(batch)
            if meta_now:
                meta_metrics, reused = self._meta_step(current, list(self.buffer) or [batch])
                metrics |= meta_metrics

        dmeta_dl = self._loss_derivative(values, create_graph=False)
        with torch.no_grad():
            meta_value = self._meta(values.detach())
        metrics["meta_loss"] = float(meta_value)
        metrics |= {f"dM/dl/{k}": float(g) for k, g in zip(self.keys, dmeta_dl, strict=True)}
        if not (bool(torch.isfinite(meta_value)) and bool(torch.isfinite(dmeta_dl).all())):
            if self.replay > 0 and self.buffer and self.buffer[-1] is batch:
                self.buffer.pop()
            detail = (
                f"M = {float(meta_value)}"
                if not bool(torch.isfinite(meta_value))
                else f"dM/dl = {dmeta_dl.tolist()}"
            )
            return metrics | self._skip("nonfinite_meta_loss", detail)
        weights = self._inner_weights(dmeta_dl)
        # backward() rather than autograd.grad: data-parallel wrappers reduce .grad in its hooks.
        for _, p in self.params:
            p.grad = None
        if reused is None:
            values.backward(weights.to(values.dtype))
        else:  # the same backward, already taken task by task in the meta step
            for (_, p), grad in zip(self.params, combine(weights.tolist(), reused), strict=True):
                p.grad = grad
        bad_grad = _first_nonfinite((n, p.grad) for n, p in self.params)
        if bad_grad is not None:
            for _, p in self.params:
                p.grad = None
            if self.replay > 0 and self.buffer and self.buffer[-1] is batch:
                self.buffer.pop()
            return metrics | self._skip("nonfinite_grad", f"gradient of {bad_grad}")
        self.optimizer.step()
        if self.check_parameters:
            bad_param = _first_nonfinite(self.params)
            if bad_param is not None:
                raise NonFiniteParametersError(
                    f"parameter {bad_param} became non-finite in the inner update of step "
                    f"{self.step_count} although its gradient was finite: the optimizer "
                    "diverged (learning rate too high?)"
                )
        self.consecutive_skips = 0
        after_update = getattr(self.meta_loss, "after_update", None)
        if after_update is not None:
            after_update(values.detach(), lambda: self._losses_without_graph(current))
        if self.meta_optimizer is not None and self.schedule == "release":
            # After the update: the step's pass is at the old weights, nothing of it is reused.
            if meta_now:
                metrics |= self._meta_step(None, list(self.buffer) or [batch])[0]
            if self.replay > 0:
                self._remember(batch)
        return metrics | self._skip_metrics()

    def _inner_weights(self, dmeta_dl: torch.Tensor) -> torch.Tensor:
        """The per-task weights of the inner update's gradient ``sum_t weight_t grad l_t``:
        ``dM/dl``, or with ``normalize_weights`` ``dM/dl / mean_t |dM/dl_t|`` (left as is when
        every ``dM/dl_t`` is 0)."""
        if not self.normalize_weights:
            return dmeta_dl
        scale = dmeta_dl.abs().mean()
        return dmeta_dl / scale if bool(scale > 0) else dmeta_dl

    def _is_meta_call(self) -> bool:
        if self.schedule == "release":
            return (self.step_count - 1) % self.meta_every == 0
        return self.step_count % self.meta_every == 0

    def _remember(self, batch: Any) -> None:
        """Append ``batch`` to the replay buffer, evicting one batch beyond ``replay``."""
        self.buffer.append(batch)
        if len(self.buffer) <= self.replay:
            return
        if self.eviction == "oldest":
            self.buffer.popleft()
            return
        weights = torch.arange(1.0, self.replay + 1, dtype=torch.float64)
        index = int(torch.multinomial(weights, 1, generator=self.generator))
        del self.buffer[index]

    def _losses_without_graph(self, current: _Pass) -> torch.Tensor:
        """The losses of ``current``'s batch at the live weights, no graph, no side effects."""
        with torch.no_grad(), self._no_side_effects():
            return current.losses().detach()

    def _skip(self, reason: str, detail: str) -> dict[str, float]:
        """Count an inner update skipped for ``reason``; the skip metrics."""
        self.skipped[reason] += 1
        self.consecutive_skips += 1
        self.last_skip = f"{reason}: non-finite {detail}"
        return self._skip_metrics()

    def _skip_metrics(self) -> dict[str, float]:
        return {f"skipped/{k}": float(v) for k, v in self.skipped.items()}

    def _meta_step(
        self, current: _Pass | None, candidates: list
    ) -> tuple[dict[str, float], list[list[torch.Tensor]] | None]:
        """One meta update with B_pri and B_aux drawn from ``candidates`` (the replay buffer,
        or the current batch alone: ``replay=0``, or an empty buffer under ``"release"``);
        ``current``: the step's pass at the current weights, reused when a drawn batch is its
        batch (None when the weights have moved since). Returns the metrics and the per-task
        gradients at ``current`` if the hypergradient computed them."""
        start = time.perf_counter()
        if not self.buffer:
            primary_batch = aux_batch = candidates[0]
        else:
            i, j = torch.randint(len(candidates), (2,), generator=self.generator).tolist()
            primary_batch, aux_batch = candidates[i], candidates[j]
        with self._no_side_effects():
            result = self._hypergradient(primary_batch, aux_batch, current)
        grads, l_pri = result.grads, result.l_pri
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
        metrics = {"meta/L_pri": l_pri, "meta/hypergrad_norm": norm}
        self.meta_steps += 1
        if self.fidelity_every and self.meta_steps % self.fidelity_every == 0:
            metrics |= self._fidelity(grads, primary_batch, aux_batch)
        if not math.isfinite(norm):
            self.skipped["nonfinite_hypergrad"] += 1
            self.last_skip = f"nonfinite_hypergrad: meta step {self.step_count}, norm {norm}"
        else:
            phi = list(self.meta_loss.parameters())
            saved_phi = [p.detach().clone() for p in phi]
            saved_state = copy.deepcopy(self.meta_optimizer.state_dict())
            for p, g in zip(phi, grads, strict=True):
                p.grad = g.detach()
            if self.meta_grad_clip is not None:
                nn.utils.clip_grad_norm_(phi, self.meta_grad_clip)
            self.meta_optimizer.step()
            bad_phi = _first_nonfinite(self.meta_loss.named_parameters())
            if bad_phi is not None:
                with torch.no_grad():
                    for p, saved in zip(phi, saved_phi, strict=True):
                        p.copy_(saved)
                self.meta_optimizer.load_state_dict(saved_state)
                self.skipped["nonfinite_phi"] += 1
                self.last_skip = (
                    f"nonfinite_phi: meta step {self.step_count} would make {bad_phi} non-finite"
                )
        metrics["meta/seconds"] = time.perf_counter() - start
        return metrics, result.current_task_gradients

    def _fidelity(self, grads: list[torch.Tensor], primary_batch: Any, aux_batch: Any) -> dict:
        """The cosine and norm ratio between ``grads`` and the reference hypergradient on the
        same batches (fresh forwards at the current weights; no side effects)."""
        configured = (self.solver, self.products)
        self.solver, self.products = self.fidelity_solver, self.fidelity_products
        try:
            with self._no_side_effects():
                reference = self._hypergradient(primary_batch, aux_batch, None).grads
        finally:
            self.solver, self.products = configured
        a = torch.cat([g.detach().double().reshape(-1) for g in grads])
        b = torch.cat([g.detach().double().reshape(-1) for g in reference])
        denominator = float(a.norm() * b.norm())
        return {
            "meta/fidelity_cosine": float(a @ b) / denominator if denominator else math.nan,
            "meta/fidelity_norm_ratio": float(a.norm() / b.norm()) if b.norm() else math.nan,
        }

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Meta-net, both optimizers, step counter, replay generator and buffer, skip counters,
        loss keys. The model's weights are not included."""
        return {
            "meta_loss": self.meta_loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "meta_optimizer": None
            if self.meta_optimizer is None
            else self.meta_optimizer.state_dict(),
            "step_count": self.step_count,
            "generator": self.generator.get_state(),
            "buffer": list(self.buffer),
            "skipped": dict(self.skipped),
            "consecutive_skips": self.consecutive_skips,
            "meta_steps": self.meta_steps,
            "keys": self.keys,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``; the model's weights must be restored separately."""
        self.meta_loss.load_state_dict(state["meta_loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["meta_optimizer"] is None) != (self.meta_optimizer is None):
            raise ValueError(
                "state has a meta_optimizer state iff this learner has a meta_optimizer"
            )
        if self.meta_optimizer is not None:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])
        self.step_count = int(state["step_count"])
        self.generator.set_state(state["generator"])
        self.buffer.clear()
        self.buffer.extend(state["buffer"])
        self.skipped = dict.fromkeys(SKIP_REASONS, 0) | dict(state["skipped"])
        self.consecutive_skips = int(state.get("consecutive_skips", 0))
        self.meta_steps = int(state.get("meta_steps", 0))
        self.keys = None if state["keys"] is None else list(state["keys"])
