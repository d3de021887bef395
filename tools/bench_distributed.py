"""Throughput and per-rank memory of data-parallel MELTR training on CPU processes (printed).

python tools/bench_distributed.py                      # 1 vs 2 processes, replicate and fsdp
python tools/bench_distributed.py --steps 20 --batch-size 32

Runs the quickstart recipe's model (a tiny All-in-one: width 128, depth 2, 4 frames of 32 px,
24 tokens) with its loss source (itc + mlm) and the MetaLearner (Identity solver, finite
differences, a meta step every 5 steps) on random batches of a fixed global size, so the data
pipeline is left out. For every configuration it prints the training steps per second (after
warm-up steps, timed on rank 0; one thread per process) and, per rank, the bytes held by
parameters and by the backbone optimizer's state.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import meltr
from meltr.backbones.allinone.losses import AllInOneRetrievalLoss
from meltr.backbones.allinone.model import AllInOne
from meltr.train.distributed import (
    Distributed,
    check_meta_learning_supported,
    init_distributed,
    mean_over_ranks,
    reduced_loss_source,
    shutdown_distributed,
    spawn_local_ranks,
    wrap_model,
)

VOCAB = 1000
TEXT_LEN = 24
FRAMES = 4
IMAGE = 32
WARMUP_STEPS = 5


def tiny_allinone() -> AllInOne:
    """The quickstart recipe's backbone (gin/quickstart.gin)."""
    return AllInOne(
        vocab_size=VOCAB,
        max_text_len=TEXT_LEN,
        num_frames=FRAMES,
        image_size=IMAGE,
        patch_size=8,
        width=128,
        depth=2,
        heads=4,
        mlp_ratio=2.0,
        proj_dim=64,
        drop_rate=0.0,
    )


def random_batch(size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A batch with the keys and shapes of docs/ARCHITECTURE.md, 15% of the tokens masked."""
    text_ids = torch.randint(5, VOCAB, (size, TEXT_LEN), generator=generator)
    masked = torch.rand(size, TEXT_LEN, generator=generator) < 0.15
    return {
        "video": torch.randn(size, FRAMES, 3, IMAGE, IMAGE, generator=generator),
        "text_ids": text_ids,
        "text_mask": torch.ones_like(text_ids),
        "mlm_ids": text_ids.masked_fill(masked, 4),
        "mlm_labels": text_ids.masked_fill(~masked, -100),
    }


def local_bytes(tensors) -> int:
    """Bytes this rank stores for ``tensors`` (a DTensor counts only its local shard)."""
    total = 0
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        total += local.numel() * local.element_size()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer):
    for state in optimizer.state.values():
        yield from (value for value in state.values() if torch.is_tensor(value))


def bench_rank(strategy: str, global_batch: int, steps: int, report: Path) -> None:
    """Run on one rank: build, warm up, time ``steps`` learner steps, write rank 0's report."""
    config = Distributed(strategy=strategy)
    context = init_distributed(config)
    torch.manual_seed(0)
    model = wrap_model(tiny_allinone(), context, config)
    meta_loss = meltr.MetaLossTransformer(2, dim=32, heads=4, ff_dim=32, scale_hidden=32)
    solver = meltr.solvers.Identity()
    check_meta_learning_supported(strategy, "finite_difference", solver)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    learner = meltr.MetaLearner(
        model,
        meta_loss,
        reduced_loss_source(AllInOneRetrievalLoss(("itc", "mlm"))),
        optimizer,
        torch.optim.Adam(meta_loss.parameters(), lr=1e-3),
        solver=solver,
        meta_every=5,
        reduce=mean_over_ranks,
    )
    local_size = global_batch // context.world_size
    generator = torch.Generator().manual_seed(context.rank)
    batches = [random_batch(local_size, generator) for _ in range(4)]
    for step in range(WARMUP_STEPS):
        learner.step(batches[step % len(batches)])
    started = time.perf_counter()
    for step in range(steps):
        learner.step(batches[step % len(batches)])
    seconds = time.perf_counter() - started
    parameter_bytes = local_bytes(model.parameters())
    optimizer_bytes = local_bytes(optimizer_state_tensors(optimizer))
    if context.rank == 0:
        report.write_text(f"{steps / seconds:.3f} {parameter_bytes} {optimizer_bytes}")
    shutdown_distributed()


def run(strategy: str, world_size: int, global_batch: int, steps: int) -> tuple[float, int, int]:
    """(steps per second, parameter bytes per rank, optimizer-state bytes per rank)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.txt"
        args = (strategy, global_batch, steps, report)
        spawn_local_ranks(bench_rank, world_size, *args)
        rate, parameters, optimizer = report.read_text().split()
    return float(rate), int(parameters), int(optimizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 5 warm-up)")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch size")
    args = parser.parse_args(argv)
    configurations = [("replicate", 1), ("replicate", 2), ("fsdp", 1), ("fsdp", 2)]
    print(f"global batch {args.batch_size}, {args.steps} timed steps, {os.cpu_count()} CPU cores")
    header = ("strategy", "procs", "steps/s", "params MiB/rank", "optim MiB/rank")
    print("{:>8} {:>5} {:>8} {:>16} {:>15}".format(*header))
    for strategy, world_size in configurations:
        rate, parameters, optimizer = run(strategy, world_size, args.batch_size, args.steps)
        print(
            f"{strategy:>8} {world_size:>5} {rate:>8.2f} {parameters / 2**20:>16.2f} "
            f"{optimizer / 2**20:>15.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
