"""MetaLearner: the MELTR training step (inner update + periodic meta update of the meta loss).

The learner coordinates parts with one job each: ``meltr.objective`` evaluates the loss source
(a ``Pass``), ``meltr.meta_network`` evaluates and differentiates the meta loss in its own
precision, ``meltr.inner_update`` steps the weights, the solver computes the hypergradient of a
``meltr.hypergradients.MetaProblem`` (which also holds the fidelity probe), ``meltr.replay``
keeps the batches the meta step draws and says when it runs, and ``meltr.guards`` keeps
non-finite values from the weights and phi and counts what was skipped.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from meltr.arguments import is_number
from meltr.guards import SKIP_REASONS, Guards, NonFiniteParametersError
from meltr.hypergradients import FidelityProbe, Hypergradient, MetaProblem, Reduce
from meltr.inner_update import Aggregate, InnerUpdate, check_aggregate
from meltr.meta_network import MetaNetwork
from meltr.objective import (
    LossSource,
    Pass,
    check_keys,
    evaluate,
    evaluate_pair,
    without_side_effects,
)
from meltr.products import Products, make_products
from meltr.replay import MetaSchedule, ReplayBuffer
from meltr.solvers import ConjugateGradient, Identity, Solver, check_solver

__all__ = ["SKIP_REASONS", "MetaLearner", "NonFiniteParametersError"]


def _identity_reduce(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class MetaLearner:
    """Fine-tunes ``model`` on the meta loss ``M(l; phi)`` and meta-learns phi.

    The inner update descends ``M(l(w; B); phi)`` in w, the meta update
    ``L_pri = l_0(w; B_pri) + gamma * |M(l(w; B_aux)) - sum_t l_t(w; B_aux)|`` in phi (notation
    and hypergradient: ``meltr.hypergradients``).

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
        solver: ``meltr.solvers.Identity() | Neumann | ConjugateGradient | StocBIO | Unrolled``
            (``StocBIO`` takes each Hessian-vector product on a batch drawn from the replay
            buffer).
        products: ``"finite_difference"`` (central differences, the default),
            ``"finite_difference_one_sided"``, ``"task_gradients"`` (exact ``c`` from one
            backward per task; single process only), ``"forward"`` or ``"autograd"``
            (``meltr.products``).
        meta_every: a meta update on every ``meta_every``-th call of ``step``.
        gamma: weight of the regularizer ``|M - sum_t l_t|`` in ``L_pri``.
        replay: number of recent training batches the meta step draws B_pri and B_aux from
            (independently, uniformly); 0 uses the current batch for both.
        schedule: ``"meltr"`` (meta steps before the inner update, on calls ``meta_every,
            2 * meta_every, ...``; the current batch can be drawn, its forward then reused) or
            ``"release"`` (the MELTR release's loop: after the inner update, on calls ``1,
            meta_every + 1, ...``, from the earlier batches); ``meltr.replay.MetaSchedule``.
        eviction: which buffered batch leaves when a new one exceeds ``replay``: ``"oldest"``
            or ``"weighted"`` (``meltr.replay.ReplayBuffer``).
        meta_grad_clip: max global norm of phi's gradient (None: no clipping).
        direct_grad: include the regularizer's direct ``dL_pri/dphi`` term.
        reduce: applied to the loss-derivative vector ``c`` and to each of phi's gradients
            (default: identity); the seam for distributed training (an all-reduce mean).
            Gradients with respect to w are taken with ``backward()``, so a data-parallel model
            reduces them in its hooks (docs/distributed.md).
        replay_seed: seed of the replay draws' own generator (the global RNG is never used for
            them). Per step: the evicted index when a batch joins a full buffer under
            ``"weighted"`` eviction (before the meta step under ``"meltr"``, after it under
            ``"release"``); on meta steps the B_pri and B_aux indices (none while the buffer is
            empty), then one index per batch a sampling solver draws (``meltr.replay``).
        check_parameters: after every inner update, check that the model's parameters are
            finite and raise ``NonFiniteParametersError`` if not (one pass over the weights).
        fidelity_every: every this many meta steps (0: never), also compute a reference
            hypergradient on the same batches with ``fidelity_solver`` (default
            ``ConjugateGradient(maxiter=10, damping=1.0)``) and ``fidelity_products`` (default:
            ``products``) and report ``meta/fidelity_cosine`` and ``meta/fidelity_norm_ratio``
            (configured norm / reference norm). It changes nothing the training computes.
        normalize_weights: the inner update descends ``M / mean_t |dM/dl_t|`` (the divisor
            held constant) instead of M, so the meta network sets only the tasks' relative
            weights and signs; the inner problem's fixed point is unchanged.
        aggregate: a gradient-aggregation baseline (PCGrad, MGDA, ...; torchjd's through
            ``meltr.train.aggregation.TorchJDAggregation``), or None: ``aggregate(rows) ->
            (gradient, weights)`` combines the rows ``r_t = dM/dl_t * dl_t/dw`` on the
            parameters two or more tasks reach, as torchjd's ``mtl_backward`` does
            (``meltr.inner_update.set_aggregated_gradient``); ``weights`` (or None) are reported
            as ``aggregate/weight/<task>``. Needs ``meta_optimizer=None``; single process only.

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
        aggregate: Aggregate | None = None,
    ) -> None:
        solver = Identity() if solver is None else solver
        _check_numbers(gamma, meta_grad_clip)
        check_solver(solver)
        if not isinstance(meta_loss, nn.Module):
            raise ValueError(f"meta_loss must be an nn.Module, got {type(meta_loss).__name__}")
        check_aggregate(aggregate, meta_optimizer)
        self.model = model
        self.meta_loss = meta_loss
        self.loss_source = loss_source
        self.meta_optimizer = meta_optimizer
        self.solver = solver
        self.products: Products = make_products(products)
        self.meta_schedule = MetaSchedule(schedule, meta_every)
        self.replay_buffer = ReplayBuffer(replay, eviction, replay_seed)
        reference_solver = fidelity_solver or ConjugateGradient(maxiter=10, damping=1.0)
        reference_products = make_products(fidelity_products or products)
        self.fidelity = FidelityProbe(fidelity_every, reference_solver, reference_products)
        self.gamma = float(gamma)
        self.meta_grad_clip = meta_grad_clip
        self.direct_grad = direct_grad
        self.reduce = _identity_reduce if reduce is None else reduce
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters (requires_grad=True)")
        self.inner_update = InnerUpdate(
            self.params, optimizer, aggregate, normalize_weights, check_parameters
        )
        self.meta_network = MetaNetwork(meta_loss)
        self.keys: list[str] | None = None
        self.step_count = 0
        self.meta_steps = 0
        self.guards = Guards()

    # ------------------------------------------------------------------ the parts' state

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.inner_update.optimizer

    @property
    def aggregate(self) -> Aggregate | None:
        return self.inner_update.aggregate

    @property
    def meta_every(self) -> int:
        return self.meta_schedule.every

    @property
    def buffer(self) -> Any:
        """The replay buffer's batches (a deque, oldest first)."""
        return self.replay_buffer.batches

    @property
    def generator(self) -> torch.Generator:
        """The generator of the replay draws."""
        return self.replay_buffer.generator

    @property
    def skipped(self) -> dict[str, int]:
        return self.guards.counts

    @property
    def consecutive_skips(self) -> int:
        return self.guards.consecutive

    @property
    def last_skip(self) -> str | None:
        return self.guards.last

    # ------------------------------------------------------------------ training step

    def step(self, batch: Any) -> dict[str, float]:
        """One inner update of the model on ``M(l(w; batch); phi)``, with a meta update of phi
        before or after it when the schedule says so.

        A meta step whose primary and/or aux batch is the current batch at the current weights
        reuses this step's forward pass (with ``products="task_gradients"`` and this step's
        pass as aux, also its per-task gradients). A skipped inner update (non-finite task
        loss, ``M``, ``dM/dl`` or gradient) leaves the weights and the optimizer untouched, runs
        no later meta step and keeps no batch for replay. Returns flat float metrics:
        ``loss/<task>``, ``meta_loss``, ``dM/dl/<task>``, ``skipped/<reason>`` (running totals)
        and, on meta steps, ``meta/L_pri``, ``meta/hypergrad_norm``, ``meta/seconds``.

        Raises:
            NonFiniteParametersError: ``check_parameters`` and a parameter became non-finite
                in the update (the optimizer's state is then no longer trustworthy).
        """
        self.step_count += 1
        current = self._forward(batch)
        current.graph_needed = True
        values = current.values.detach()
        metrics = {f"loss/{k}": float(v) for k, v in zip(self.keys, values, strict=True)}
        if not bool(torch.isfinite(values).all()):
            bad = [k for k, v in zip(self.keys, values, strict=True) if not v.isfinite()]
            return metrics | self.guards.skip_inner_update(
                "nonfinite_loss", f"task loss {', '.join(bad)}"
            )
        meta_first = self.meta_schedule.before_update
        if meta_first:
            metrics |= self._meta_phase(batch, current)
        update_metrics, skip = self.inner_update(
            current, self.meta_network, self.keys, self.step_count
        )
        metrics |= update_metrics
        if skip is not None:
            if meta_first:
                self.replay_buffer.forget(batch)
            return metrics | self.guards.skip_inner_update(*skip)
        self.guards.applied()
        after_update = getattr(self.meta_loss, "after_update", None)
        if after_update is not None:
            after_update(values, current.losses.without_graph)
        if not meta_first:
            # After the update: the step's pass is at the old weights, nothing of it is reused.
            metrics |= self._meta_phase(batch, None)
        return metrics | self.guards.metrics()

    # ------------------------------------------------------------------ meta step

    def _meta_phase(self, batch: Any, current: Pass | None) -> dict[str, float]:
        """The meta step when it is due, with ``batch`` joining the replay buffer before the
        draws when the meta step precedes the inner update (``current``: the step's pass, at
        the current weights) and after them when it follows (``current`` None)."""
        if self.meta_optimizer is None:
            return {}
        joins_first = self.meta_schedule.before_update
        if joins_first:
            self.replay_buffer.remember(batch)
        due = self.meta_schedule.is_due(self.step_count)
        metrics = self._meta_step(batch, current) if due else {}
        if not joins_first:
            self.replay_buffer.remember(batch)
        return metrics

    def _meta_step(self, batch: Any, current: Pass | None) -> dict[str, float]:
        """One meta update with B_pri and B_aux drawn from the replay buffer (``batch`` while it
        is empty); ``current`` is reused when a drawn batch is its batch."""
        start = time.perf_counter()
        primary_batch, aux_batch = self.replay_buffer.draw_pair(batch)
        with without_side_effects(self.model):
            result = self._hypergradient(primary_batch, aux_batch, current)
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in result.grads))
        metrics = {"meta/L_pri": result.l_pri, "meta/hypergrad_norm": norm}
        self.meta_steps += 1
        if self.fidelity.is_due(self.meta_steps):
            metrics |= self._fidelity(result.grads, primary_batch, aux_batch)
        self.guards.meta_update(
            self.meta_loss,
            self.meta_optimizer,
            result.grads,
            norm,
            self.meta_grad_clip,
            self.step_count,
        )
        metrics["meta/seconds"] = time.perf_counter() - start
        return metrics

    def _fidelity(self, grads: list[torch.Tensor], primary_batch: Any, aux_batch: Any) -> dict:
        """The fidelity probe's metrics for ``grads``: the reference hypergradient on the same
        batches (fresh forwards at the current weights; no side effects)."""
        probe = self.fidelity
        with without_side_effects(self.model), self.replay_buffer.kept_generator():
            reference = self._hypergradient(
                primary_batch, aux_batch, None, probe.solver, probe.products
            )
        return probe.compare(grads, reference.grads)

    # ------------------------------------------------------------------ hypergradients

    def hypergradient(self, primary_batch: Any, aux_batch: Any) -> list[torch.Tensor]:
        """``dL_pri/dphi`` as the solver approximates it, aligned with
        ``meta_loss.parameters()`` (what the meta optimizer receives as ``.grad``).

        Changes no parameter, buffer, ``.grad``, optimizer state, global RNG state or replay
        generator state (a sampling solver's draws are undone). When
        ``primary_batch is aux_batch`` the losses are computed once.
        """
        with without_side_effects(self.model), self.replay_buffer.kept_generator():
            return self._hypergradient(primary_batch, aux_batch, None).grads

    def _hypergradient(
        self,
        primary_batch: Any,
        aux_batch: Any,
        current: Pass | None,
        solver: Solver | None = None,
        products: Products | None = None,
    ) -> Hypergradient:
        """``solver``'s hypergradient (default: the configured solver and products) of
        ``L_pri`` on the two batches, evaluated with a graph at the current weights;
        ``current``, the training step's pass, serves a side whose batch is its batch."""
        primary, aux = evaluate_pair(self._forward, primary_batch, aux_batch, current)
        problem = MetaProblem(
            primary,
            aux,
            self.params,
            self.meta_network,
            self.products if products is None else products,
            self.gamma,
            self.direct_grad,
            self.reduce,
            draw_batch=lambda: self.replay_buffer.draw(aux_batch),
        )
        return (self.solver if solver is None else solver).hypergradient(problem)

    def _forward(self, batch: Any) -> Pass:
        """The loss source on ``batch`` with a graph; the first call fixes and checks ``keys``."""
        first = self.keys is None
        current = evaluate(self.model, self.loss_source, batch, self.keys)
        if first:
            self.keys = check_keys(current, getattr(self.meta_loss, "num_tasks", None))
        return current

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Meta-net, both optimizers, step counter, replay generator and buffer, skip counters,
        loss keys. The model's weights are not included."""
        meta_optimizer = self.meta_optimizer
        return {
            "meta_loss": self.meta_loss.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "meta_optimizer": None if meta_optimizer is None else meta_optimizer.state_dict(),
            "step_count": self.step_count,
            **self.replay_buffer.state_dict(),
            **self.guards.state_dict(),
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
        self.replay_buffer.load_state_dict(state)
        self.guards.load_state_dict(state)
        self.meta_steps = int(state.get("meta_steps", 0))
        self.keys = None if state["keys"] is None else list(state["keys"])


def _check_numbers(gamma: object, meta_grad_clip: object) -> None:
    if not is_number(gamma) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if meta_grad_clip is not None and (not is_number(meta_grad_clip) or not meta_grad_clip > 0):
        raise ValueError(f"meta_grad_clip must be a number > 0 or None, got {meta_grad_clip!r}")
