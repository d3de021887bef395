"""MetaLearner: the MELTR training step (inner update + periodic meta update of the meta loss).

The learner coordinates parts with one job each: ``meltr.objective`` evaluates the loss source
(``Pass``), ``meltr.meta_network`` evaluates and differentiates the meta loss in its own
precision, the solver computes the hypergradient of a ``meltr.hypergradients.MetaProblem``,
``meltr.replay`` keeps the batches the meta step draws and says when it runs,
``meltr.inner_update`` sets the inner update's gradient and ``meltr.guards`` keeps non-finite
values from the weights and counts what was skipped. The math is in ``meltr.hypergradients``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from meltr.arguments import is_number
from meltr.guards import (
    SKIP_REASONS,
    NonFiniteParametersError,
    SkipCounter,
    first_nonfinite,
    step_or_undo,
)
from meltr.hypergradients import FidelityProbe, Hypergradient, MetaProblem, Reduce
from meltr.inner_update import Aggregate, set_aggregated_gradient, set_gradient, task_weights
from meltr.meta_network import MetaNetwork
from meltr.objective import LossSource, Pass, evaluate, without_side_effects
from meltr.products import Products, make_products
from meltr.replay import MetaSchedule, ReplayBuffer
from meltr.solvers import ConjugateGradient, Identity, Solver

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
            ``"finite_difference_one_sided"`` (one perturbed forward; reuses the aux pass's loss
            values; less accurate), ``"task_gradients"`` (exact ``c`` from one backward per
            task; cheapest when the tasks' graphs are disjoint, single process only),
            ``"forward"`` or ``"autograd"`` (see ``meltr.products``).
        meta_every: a meta update on every ``meta_every``-th call of ``step``.
        gamma: weight of the regularizer ``|M - sum_t l_t|`` in ``L_pri``.
        replay: number of recent training batches the meta step draws B_pri and B_aux from
            (independently, uniformly); 0 uses the current batch for both.
        schedule: when meta steps run and which batches they may draw: ``"meltr"`` (before the
            inner update, on calls ``meta_every, 2 * meta_every, ...``; the current batch can
            be drawn and its forward is then reused) or ``"release"`` (the MELTR release's
            loop: after the inner update, on calls ``1, meta_every + 1, ...``, from the earlier
            batches); see ``meltr.replay.MetaSchedule``.
        eviction: which buffered batch leaves when a new one exceeds ``replay``: ``"oldest"``
            or ``"weighted"`` (``meltr.replay.ReplayBuffer``).
        meta_grad_clip: max global norm of phi's gradient (None: no clipping).
        direct_grad: include the regularizer's direct ``dL_pri/dphi`` term.
        reduce: applied to the loss-derivative vector ``c`` and to each of phi's gradients
            before they are used; the seam for distributed training (e.g. an all-reduce mean).
            Default: identity. Gradients with respect to w are taken with ``backward()``, so a
            data-parallel model (FSDP2) reduces them across ranks in its hooks; a loss source
            that returns global-batch loss values (``meltr.train.distributed.
            reduced_loss_source``) then makes every quantity phi sees identical on all ranks.
        replay_seed: seed of the dedicated generator for replay draws (the global RNG is
            never used for them). Draws, in the order of the step's phases: the evicted index
            when a batch joins a full buffer under ``"weighted"`` eviction (before the meta
            step under ``"meltr"``, after it under ``"release"``); on meta steps the B_pri and
            B_aux indices (none while the buffer is empty), then one index per batch a sampling
            solver (``StocBIO``) draws (``meltr.replay.ReplayBuffer`` gives the calls).
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
        aggregate: the gradient-aggregation baselines (PCGrad, MGDA, ...; torchjd's through
            ``meltr.train.aggregation.TorchJDAggregation``), or None. When given, the inner
            update takes one backward per task; its rows ``r_t = dM/dl_t * dl_t/dw`` are
            combined by ``aggregate(rows) -> (gradient, weights)`` on the parameters the losses
            of two or more tasks reach (``rows[t]`` lists task t's gradient of each, in the
            model's order), as torchjd's ``mtl_backward`` does (``meltr.inner_update.
            set_aggregated_gradient``). ``weights``: the ``[T]`` weights of the rows when the
            aggregate is a weighted combination (reported as ``aggregate/weight/<task>``), else
            None. Needs ``meta_optimizer=None`` (the meta step assumes the inner update descends
            M); single process only.

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
        _check_arguments(meta_loss, meta_optimizer, solver, gamma, meta_grad_clip, aggregate)
        self.model = model
        self.meta_loss = meta_loss
        self.loss_source = loss_source
        self.optimizer = optimizer
        self.meta_optimizer = meta_optimizer
        self.solver = solver
        self.products: Products = make_products(products)
        self.meta_schedule = MetaSchedule(schedule, meta_every)
        self.replay_buffer = ReplayBuffer(replay, eviction, replay_seed)
        self.fidelity = FidelityProbe(
            fidelity_every,
            ConjugateGradient(maxiter=10, damping=1.0)
            if fidelity_solver is None
            else fidelity_solver,
            make_products(fidelity_products or products),
        )
        self.gamma = float(gamma)
        self.meta_grad_clip = meta_grad_clip
        self.direct_grad = direct_grad
        self.reduce = _identity_reduce if reduce is None else reduce
        self.check_parameters = check_parameters
        self.normalize_weights = bool(normalize_weights)
        self.aggregate = aggregate
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("model has no trainable parameters (requires_grad=True)")
        self.meta_network = MetaNetwork(meta_loss)
        self.keys: list[str] | None = None
        self.step_count = 0
        self.meta_steps = 0
        self.skips = SkipCounter()

    # ------------------------------------------------------------------ the parts' state

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
        return self.skips.counts

    @property
    def consecutive_skips(self) -> int:
        return self.skips.consecutive

    @property
    def last_skip(self) -> str | None:
        return self.skips.last

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
        current.graph_needed = True
        values = current.values.detach()
        metrics = {f"loss/{k}": float(v) for k, v in zip(self.keys, values, strict=True)}
        if not bool(torch.isfinite(values).all()):
            bad = [k for k, v in zip(self.keys, values, strict=True) if not v.isfinite()]
            return metrics | self.skips.inner_update(
                "nonfinite_loss", f"task loss {', '.join(bad)}"
            )
        meta_first = self.meta_schedule.before_update
        if meta_first:
            metrics |= self._meta_phase(batch, current)
        update_metrics, skip = self._inner_update(current)
        metrics |= update_metrics
        if skip is not None:
            if meta_first:
                self.replay_buffer.forget(batch)
            return metrics | self.skips.inner_update(*skip)
        self.skips.applied()
        after_update = getattr(self.meta_loss, "after_update", None)
        if after_update is not None:
            after_update(values, lambda: self._losses_without_graph(current))
        if not meta_first:
            # After the update: the step's pass is at the old weights, nothing of it is reused.
            metrics |= self._meta_phase(batch, None)
        return metrics | self.skips.metrics()

    def _inner_update(self, current: Pass) -> tuple[dict[str, float], tuple[str, str] | None]:
        """Descend ``M`` at the step's pass; the metrics, and the skip reason and detail when
        a non-finite ``M``, ``dM/dl`` or gradient stopped the update (weights untouched)."""
        values = current.values
        dmeta_dl = self.meta_network.loss_derivative(values)
        with torch.no_grad():
            meta_value = self.meta_network(values.detach())
        metrics = {"meta_loss": float(meta_value)}
        metrics |= {f"dM/dl/{k}": float(g) for k, g in zip(self.keys, dmeta_dl, strict=True)}
        if not bool(torch.isfinite(meta_value)):
            return metrics, ("nonfinite_meta_loss", f"M = {float(meta_value)}")
        if not bool(torch.isfinite(dmeta_dl).all()):
            return metrics, ("nonfinite_meta_loss", f"dM/dl = {dmeta_dl.tolist()}")
        weights = task_weights(dmeta_dl, self.normalize_weights)
        if self.aggregate is None:
            set_gradient(current, self.params, weights)
        else:
            metrics |= set_aggregated_gradient(
                current, self.params, weights, self.aggregate, self.keys
            )
        bad_grad = first_nonfinite((n, p.grad) for n, p in self.params)
        if bad_grad is not None:
            for _, p in self.params:
                p.grad = None
            return metrics, ("nonfinite_grad", f"gradient of {bad_grad}")
        self.optimizer.step()
        bad_param = first_nonfinite(self.params) if self.check_parameters else None
        if bad_param is not None:
            raise NonFiniteParametersError(
                f"parameter {bad_param} became non-finite in the inner update of step "
                f"{self.step_count} although its gradient was finite: the optimizer "
                "diverged (learning rate too high?)"
            )
        return metrics, None

    def _losses_without_graph(self, current: Pass) -> torch.Tensor:
        """The losses of ``current``'s batch at the live weights, no graph, no side effects."""
        with torch.no_grad(), without_side_effects(self.model):
            return current.losses().detach()

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
        self._meta_update(result.grads, norm)
        metrics["meta/seconds"] = time.perf_counter() - start
        return metrics

    def _meta_update(self, grads: list[torch.Tensor], norm: float) -> None:
        """Step phi along ``grads`` (clipped), unless they or the updated phi are non-finite."""
        if not math.isfinite(norm):
            self.skips.meta_update(
                "nonfinite_hypergrad", f"meta step {self.step_count}, norm {norm}"
            )
            return
        phi = list(self.meta_loss.parameters())

        def update() -> None:
            for p, g in zip(phi, grads, strict=True):
                p.grad = g.detach()
            if self.meta_grad_clip is not None:
                nn.utils.clip_grad_norm_(phi, self.meta_grad_clip)
            self.meta_optimizer.step()

        bad_phi = step_or_undo(self.meta_loss, self.meta_optimizer, update)
        if bad_phi is not None:
            self.skips.meta_update(
                "nonfinite_phi", f"meta step {self.step_count} would make {bad_phi} non-finite"
            )

    def _fidelity(self, grads: list[torch.Tensor], primary_batch: Any, aux_batch: Any) -> dict:
        """The fidelity probe's metrics for ``grads``: the reference hypergradient on the same
        batches (fresh forwards at the current weights; no side effects)."""
        with without_side_effects(self.model), self.replay_buffer.kept_generator():
            problem = self._problem(primary_batch, aux_batch, None, self.fidelity.products)
            reference = self.fidelity.solver.hypergradient(problem)
        return self.fidelity.compare(grads, reference.grads)

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
        self, primary_batch: Any, aux_batch: Any, current: Pass | None
    ) -> Hypergradient:
        """The configured solver's hypergradient on the two batches (see ``_problem``)."""
        problem = self._problem(primary_batch, aux_batch, current, self.products)
        return self.solver.hypergradient(problem)

    def _problem(
        self, primary_batch: Any, aux_batch: Any, current: Pass | None, products: Products
    ) -> MetaProblem:
        """``L_pri`` on the two batches, evaluated with a graph at the current weights (primary
        first; once when they are the same object). ``current``, the training step's pass,
        serves either side whose batch is its batch instead of a new forward."""

        def evaluated(batch: Any) -> Pass:
            if current is not None and batch is current.losses.batch:
                return current
            return self._forward(batch)

        primary = evaluated(primary_batch)
        aux = primary if aux_batch is primary_batch else evaluated(aux_batch)
        return MetaProblem(
            primary,
            aux,
            self.params,
            self.meta_network,
            products,
            self.gamma,
            self.direct_grad,
            self.reduce,
            draw_batch=lambda: self.replay_buffer.draw(aux_batch),
        )

    def _forward(self, batch: Any) -> Pass:
        """The loss source on ``batch`` with a graph; the first call fixes and checks ``keys``."""
        first = self.keys is None
        current = evaluate(self.model, self.loss_source, batch, self.keys)
        if first:
            self.keys = _checked_keys(current, self.meta_loss)
        return current

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
        self.skips.counts = dict.fromkeys(SKIP_REASONS, 0) | dict(state["skipped"])
        self.skips.consecutive = int(state.get("consecutive_skips", 0))
        self.meta_steps = int(state.get("meta_steps", 0))
        self.keys = None if state["keys"] is None else list(state["keys"])


def _check_arguments(
    meta_loss: nn.Module,
    meta_optimizer: torch.optim.Optimizer | None,
    solver: Any,
    gamma: object,
    meta_grad_clip: object,
    aggregate: Callable | None,
) -> None:
    """ValueError naming the first constructor argument the learner cannot use (the parts
    check their own)."""
    if not is_number(gamma) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if meta_grad_clip is not None and (not is_number(meta_grad_clip) or not meta_grad_clip > 0):
        raise ValueError(f"meta_grad_clip must be a number > 0 or None, got {meta_grad_clip!r}")
    if isinstance(solver, type):
        raise ValueError(
            f"solver must be an instance, got the class {solver.__name__}: "
            f"pass {solver.__name__}() (in gin: @{solver.__name__}())"
        )
    if not callable(getattr(solver, "hypergradient", None)):
        raise ValueError(f"solver must be one of meltr.solvers' classes, got {solver!r}")
    if not isinstance(meta_loss, nn.Module):
        raise ValueError(f"meta_loss must be an nn.Module, got {type(meta_loss).__name__}")
    if aggregate is not None and not callable(aggregate):
        raise ValueError(f"aggregate must be callable or None, got {aggregate!r}")
    if aggregate is not None and meta_optimizer is not None:
        raise ValueError(
            "aggregate replaces the inner update's gradient, while a meta step assumes the "
            "update descends the meta loss: gradient aggregation needs meta_optimizer=None "
            "(Recipe.meta_optimizer = None)"
        )


def _checked_keys(first: Pass, meta_loss: nn.Module) -> list[str]:
    """The loss keys of the first pass, once they are known to suit the learner: the losses
    depend on the trainable parameters and their number matches the meta loss's tasks."""
    keys = first.losses.keys
    if torch.is_grad_enabled() and not any(task.requires_grad for task in first.tasks):
        raise ValueError(
            f"none of the losses {keys} depends on the model's trainable parameters "
            "(no autograd graph): compute them from model(...) outputs, with grad enabled"
        )
    num_tasks = getattr(meta_loss, "num_tasks", None)
    if num_tasks is not None and num_tasks != len(keys):
        raise ValueError(
            f"meta loss has num_tasks={num_tasks} but the loss source returned "
            f"{len(keys)} losses {keys}"
        )
    return keys
