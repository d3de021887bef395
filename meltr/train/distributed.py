"""Process-group setup from torchrun's environment, model wrapping per strategy, and the few
cross-rank operations exact meta-learning needs.

Strategies (gin: ``Distributed.strategy``):

- ``"none"``: one process, no process group.
- ``"replicate"``: replicated data parallelism: whole parameters on every rank, gradients
  all-reduced (averaged). Built with FSDP2 on a (ranks x 1) HSDP mesh rather than
  ``DistributedDataParallel`` (this strategy was called ``"ddp"`` before):
  DDP's reducer expects exactly one backward per forward, while a MELTR step runs several
  forwards per backward (text, video, joint passes) and several backwards per step (meta step).
- ``"fsdp"``: FSDP2 (``fully_shard``) on every unit the model names (``fsdp_units()``) and on the
  root; parameters,
  gradients and optimizer state are sharded over ranks; gradients are averaged.

Why the meta-learning stays exact across ranks (see docs/distributed.md): every rank sees its slice
of the global batch. ``reduced_loss_source`` gives every rank the global-batch loss values while
keeping gradients local, so FSDP2's gradient averaging yields the exact global gradient and
everything the meta network sees (losses, finite-difference products) is identical on every rank;
``mean_over_ranks`` averages phi's gradient anyway; ``assert_replicated`` checks phi.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

import gin
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from meltr.ranks import is_data_parallel
from meltr.solvers import SOLVERS
from meltr.train.config import RENAMED_VALUES

LossSource = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]
STRATEGIES = ("none", "replicate", "fsdp")
DISTRIBUTED_PRODUCTS = ("finite_difference",)
_TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@gin.configurable
@dataclass(frozen=True)
class Distributed:
    """How a run is spread over processes.

    strategy: "none" | "replicate" | "fsdp".
    mixed_precision: FSDP only, GPU only: bf16 parameters and compute, fp32 gradient reduction.
    activation_checkpointing: recompute every transformer block in backward (non-reentrant).
    debug_checks: after every meta step, verify the meta network is bit-identical on all ranks.
    timeout_minutes: how long a collective may wait before the process group aborts.
    """

    strategy: str = "none"
    mixed_precision: bool = False
    activation_checkpointing: bool = False
    debug_checks: bool = False
    timeout_minutes: float = 30.0

    def __post_init__(self) -> None:
        renamed = RENAMED_VALUES.get(("Distributed.strategy", self.strategy))
        if renamed is not None:
            raise ValueError(f"Distributed.strategy={self.strategy!r} was renamed {renamed!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"Distributed.strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}"
            )
        if self.mixed_precision and self.strategy != "fsdp":
            raise ValueError(
                "Distributed.mixed_precision=True needs Distributed.strategy='fsdp' "
                f"(got {self.strategy!r})"
            )


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the run. ``world_size == 1`` and ``rank == 0`` for "none"."""

    strategy: str
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the one process that logs and writes replicated state (rank 0)."""
        return self.rank == 0


def init_distributed(config: Distributed) -> DistributedContext:
    """Start the process group described by torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT) and pick this process's device: ``cuda:LOCAL_RANK`` with nccl when a
    GPU is present, CPU with gloo otherwise.

    "replicate"/"fsdp" without torchrun's environment start a one-process group, so a sharded run
    can be debugged with plain ``python``. "none" under a multi-process launch is refused: every
    process would train its own copy.
    """
    present = {name: os.environ[name] for name in _TORCHRUN_VARIABLES if name in os.environ}
    world_size = int(present.get("WORLD_SIZE", "1"))
    if config.strategy == "none":
        if world_size > 1:
            raise RuntimeError(
                f"WORLD_SIZE={world_size} (launched by torchrun) but Distributed.strategy='none'; "
                "set Distributed.strategy to 'replicate' or 'fsdp'"
            )
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        return DistributedContext("none", 0, 1, 0, device)
    if config.mixed_precision and not torch.cuda.is_available():
        raise ValueError(
            "Distributed.mixed_precision=True (bf16) needs a GPU; this machine has none"
        )

    local_rank = int(present.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    timeout = datetime.timedelta(minutes=config.timeout_minutes)
    if "RANK" in present:
        missing = [name for name in _TORCHRUN_VARIABLES if name not in present]
        if missing:
            raise RuntimeError(
                f"incomplete torchrun environment: {', '.join(missing)} not set; "
                "launch with torchrun"
            )
        dist.init_process_group(backend, timeout=timeout, device_id=_device_id(device))
    else:
        dist.init_process_group(
            backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
        )
    return DistributedContext(
        config.strategy, dist.get_rank(), dist.get_world_size(), local_rank, device
    )


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def shutdown_distributed() -> None:
    """Leave the process group cleanly: wait until every rank arrives, then destroy it.

    Without the barrier a fast rank can tear down its gloo connections while a slow rank is still
    inside a collective (or still sending its last bytes), and the slow rank aborts at exit.
    A no-op when no process group is running.
    """
    if not dist.is_initialized():
        return
    dist.barrier()
    dist.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """End a process that took part in a process group, skipping interpreter teardown.

    Even after ``shutdown_distributed``, the C++ destructors that run at interpreter exit
    occasionally meet a still-joinable gloo/c10d thread and abort the process ("terminate called
    without an active exception", SIGABRT) after all its work is done and saved; a launcher then
    reports a failed run. Flushing what Python buffers and leaving through ``os._exit`` avoids
    those destructors. Call it only once outputs are written and the process group is gone.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def spawn_local_ranks(function: Callable[..., None], world_size: int, *args: object) -> None:
    """Call ``function(*args)`` on ``world_size`` fresh local processes with torchrun's environment
    set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free localhost port) and one
    torch thread each, as torchrun gives a CPU run. ``function`` starts and leaves the process group
    itself; each process then ends through ``exit_process``. For tests and benchmarks on one
    machine; raises if any process fails or dies."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.start_processes(
        _local_rank_entry,
        args=(world_size, port, function, args),
        nprocs=world_size,
        join=True,
        start_method="spawn",
    )


def _local_rank_entry(
    rank: int, world_size: int, port: int, function: Callable[..., None], args: tuple
) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    function(*args)
    exit_process(0)


def wrap_model(model: nn.Module, context: DistributedContext, config: Distributed) -> nn.Module:
    """Wrap ``model`` for ``config.strategy`` in place (moving it to ``context.device`` for
    "replicate" / "fsdp"; a one-process model stays where it is).

    The units are the ones the model names (``model.fsdp_units()``: transformer layers, residual
    stages, ...). Activation checkpointing replaces each unit by a ``CheckpointWrapper``
    (state-dict keys are unchanged); "replicate"/"fsdp" turn every unit and the root into FSDP2
    units whose parameters are ``DTensor``s (replicated or sharded). Returns ``model``; call it
    as before.
    """
    if config.strategy != context.strategy:
        raise ValueError(
            f"wrap_model: config.strategy={config.strategy!r} but the process group was started "
            f"for {context.strategy!r}"
        )
    if config.strategy != "none":
        model.to(context.device)
    elif not config.activation_checkpointing:
        return model
    blocks = fsdp_units(model)
    if config.activation_checkpointing:
        block_ids = {id(block) for block in blocks}
        apply_activation_checkpointing(
            model,
            checkpoint_wrapper_fn=partial(
                checkpoint_wrapper, checkpoint_impl=CheckpointImpl.NO_REENTRANT
            ),
            check_fn=lambda module: id(module) in block_ids,
        )
        blocks = [
            module for module in model.modules() if _is_checkpoint_wrapper_of(module, block_ids)
        ]
    if config.strategy == "none":
        return model
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if config.mixed_precision
        else MixedPrecisionPolicy()
    )
    mesh = _data_parallel_mesh(context)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    # The root would otherwise stay gathered after a no-grad forward and later forwards would
    # reuse that stale copy, missing in-place updates of the shards (the finite-difference
    # perturbations of the meta step).
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=True)
    return model


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The model's own list of FSDP units (``model.fsdp_units()``); ValueError naming the model
    when it has none or names a module that is not one of its submodules."""
    units = getattr(model, "fsdp_units", None)
    if not callable(units):
        raise ValueError(f"{type(model).__name__} names no FSDP units (no fsdp_units() method)")
    units = list(units())
    own = {id(module) for module in model.modules()}
    if not units or any(id(unit) not in own or unit is model for unit in units):
        raise ValueError(
            f"{type(model).__name__}.fsdp_units() must list submodules of the model (not the "
            "model itself), at least one"
        )
    return units


def _is_checkpoint_wrapper_of(module: nn.Module, block_ids: set[int]) -> bool:
    wrapped = getattr(module, "_checkpoint_wrapped_module", None)
    return wrapped is not None and id(wrapped) in block_ids


def _data_parallel_mesh(context: DistributedContext) -> DeviceMesh:
    """FSDP2's device mesh for the strategy: "fsdp" shards over all ranks; "replicate" replicates
    over all ranks (HSDP with shards of size 1), so parameters stay whole on every rank and
    gradients are all-reduced, as with DistributedDataParallel."""
    if context.strategy == "fsdp":
        return init_device_mesh(
            context.device.type, (context.world_size,), mesh_dim_names=("shard",)
        )
    return init_device_mesh(
        context.device.type, (context.world_size, 1), mesh_dim_names=("replicate", "shard")
    )


@contextlib.contextmanager
def gathered_parameters(model: nn.Module) -> Iterator[None]:
    """Hold every FSDP2 unit of ``model`` unsharded (whole parameters on every rank) inside the
    block, so forwards need no collective and ranks may run different numbers of them (evaluation
    over uneven shares of a test split). Entry and exit are collectives. Costs the memory of one
    whole copy of the parameters per rank. A no-op for a model without FSDP2 units."""
    units = [module for module in model.modules() if isinstance(module, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False)
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True)  # wrap_model's setting for every unit


def global_mean_losses(losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The learner's ``reduce_losses`` hook for data-parallel runs.

    Returns ``l_local + (mean_over_ranks(l_local) - l_local)`` with the correction detached: the
    value is the global-batch loss (for equal local batch sizes), identical on every rank, while
    the gradient stays that of the local loss, so DDP's / FSDP's gradient averaging produces the
    exact global gradient. One all-reduce for all losses. Identity without a process group.
    """
    if not is_data_parallel():
        return dict(losses)
    names = list(losses)
    local = torch.stack([losses[name] for name in names])
    if local.dim() != 1:
        raise ValueError(
            "global_mean_losses: every loss must be a scalar; got shapes "
            + ", ".join(f"{name}={tuple(losses[name].shape)}" for name in names)
        )
    corrected = local + (mean_over_ranks(local) - local.detach())
    return {name: corrected[index] for index, name in enumerate(names)}


def reduced_loss_source(loss_source: LossSource) -> LossSource:
    """``loss_source`` followed by ``global_mean_losses``: every evaluation the learner makes (the
    step's, the meta step's, the finite-difference passes') then sees global-batch loss values.
    Every rank must evaluate in lockstep (each call is a collective)."""

    def reduced(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        return global_mean_losses(loss_source(model, batch))

    return reduced


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over ranks, as a new tensor without autograd history
    (the learner's ``reduce`` hook for replicated quantities such as the meta network's gradient).
    Identity without a process group."""
    if not is_data_parallel():
        return tensor
    mean = tensor.detach().clone()
    dist.all_reduce(mean, op=dist.ReduceOp.SUM)
    return mean / dist.get_world_size()


def assert_replicated(parameters: Iterable[torch.Tensor], meta_step: int) -> None:
    """Raise if the replicated ``parameters`` (the meta network) differ on any rank.

    Compares two float64 checksums per rank (the plain sum and a position-weighted sum, which also
    catches permuted values) for exact equality. ``meta_step`` is named in the error.
    """
    if not is_data_parallel():
        return
    flat = torch.cat([param.detach().reshape(-1).to(torch.float64) for param in parameters])
    positions = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    checksum = torch.stack([flat.sum(), (flat * positions).sum()])
    every_rank = [torch.empty_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(every_rank, checksum)
    if any(not torch.equal(other, every_rank[0]) for other in every_rank[1:]):
        table = ", ".join(f"rank {r}: {c.tolist()}" for r, c in enumerate(every_rank))
        raise RuntimeError(
            f"meta-loss parameters differ across ranks after meta step {meta_step} ({table})"
        )


def check_meta_learning_supported(
    strategy: str, products: str, solver: object, aggregate: object = None
) -> None:
    """Refuse, at start, the combinations a data-parallel run cannot execute.

    "replicate"/"fsdp" cannot take double backward (``products="autograd"``), forward-mode
    derivatives (``products="forward"``) or differentiable unrolled updates (solver ``Unrolled``)
    through the backbone (FSDP2 frees gathered parameters after use and reduces gradients in
    backward hooks): ``products`` must be finite differences and ``solver`` (an instance) must
    declare ``supports_data_parallel``. Nor can they aggregate per-task gradients
    (``aggregate``, the learner's ``MetaLearner.aggregate``, if not None): that takes one
    backward per task, and the wrappers reduce gradients once per backward.
    """
    if strategy == "none":
        return
    if aggregate is not None:
        raise ValueError(
            f"Distributed.strategy={strategy!r} cannot run MetaLearner.aggregate = {aggregate!r}: "
            "gradient aggregation takes one backward per task and is single-process only; use "
            "Distributed.strategy='none'"
        )
    if products not in DISTRIBUTED_PRODUCTS or not getattr(solver, "supports_data_parallel", False):
        names = [kind.__name__ for kind in SOLVERS if kind.supports_data_parallel]
        raise ValueError(
            f"Distributed.strategy={strategy!r} cannot run products={products!r} with solver "
            f"{type(solver).__name__}: it needs double backward, forward mode or differentiable "
            "updates through the backbone. Use products='finite_difference' with solver "
            + ", ".join(names[:-1])
            + f" or {names[-1]}"
        )
