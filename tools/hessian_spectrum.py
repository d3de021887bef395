"""The extreme eigenvalues of the inner Hessian H = d^2 M(l(w; B); phi) / dw^2 of a recipe at its
starting point (checkpoint loaded, phi initial), by power iteration on the learner's own
Hessian-vector products (its ``products``): what the solvers' settings need. Neumann's series
converges only for 0 < alpha < 2 / lambda_max and H positive definite; CG's (H + damping I) is
positive definite only for damping > -lambda_min.

    python tools/hessian_spectrum.py --gin gin/demo/video_downstream.gin \\
        --CHECKPOINT=runs/demo/pretrain/checkpoints/last.pt [--batches 3] [--iterations 25]

Per training batch (the first ``--batches`` of the recipe's training stream) it prints the
eigenvalue of largest magnitude and the one at the other end of the spectrum (power iteration on
H minus the first). Power iteration converges slowly where the top eigenvalues are close: read
the numbers as magnitudes. Nothing is trained and no run directory is kept.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import gin
import torch

import meltr.train.configurables  # noqa: F401  (the gin registrations)
from meltr.train import build
from meltr.train.cli import add_recipe_arguments, run_command
from meltr.train.config import parse_gin, sweep_args_to_bindings
from meltr.train.distributed import init_distributed
from meltr.train.loop import Trainer
from meltr.train.run_directory import RunDirectoryLock

Vectors = list[torch.Tensor]


def _dot(a: Vectors, b: Vectors) -> float:
    return sum(float((x * y).sum()) for x, y in zip(a, b, strict=True))


def power_iteration(
    hvp: Callable[[Vectors], Vectors], start: Vectors, iterations: int, shift: float = 0.0
) -> float:
    """The Rayleigh quotient of ``H - shift I`` after ``iterations`` power steps from ``start``,
    plus ``shift``: the eigenvalue of H farthest from ``shift``."""
    norm = _dot(start, start) ** 0.5
    x = [v / norm for v in start]
    value = 0.0
    for _ in range(iterations):
        y = [hx - shift * xi for hx, xi in zip(hvp(x), x, strict=True)]
        value = _dot(x, y)
        norm = _dot(y, y) ** 0.5
        if norm == 0:
            break
        x = [v / norm for v in y]
    return value + shift


def extreme_eigenvalues(
    hvp: Callable[[Vectors], Vectors], like: Vectors, iterations: int, seed: int = 0
) -> tuple[float, float]:
    """(the eigenvalue of largest magnitude, the eigenvalue farthest from it) of the symmetric
    operator ``hvp`` on vectors shaped as ``like``."""
    generator = torch.Generator().manual_seed(seed)

    def start() -> Vectors:
        return [torch.randn(v.shape, generator=generator, dtype=v.dtype) for v in like]

    dominant = power_iteration(hvp, start(), iterations)
    return dominant, power_iteration(hvp, start(), iterations, shift=dominant)


def starting_point(gin_files: Sequence[str], bindings: Sequence[str], scratch: Path):
    """The recipe's learner (checkpoint loaded, nothing trained) and its training batches, built
    by the training loop's own preparation in a run directory under ``scratch``, W&B off."""
    parse_gin(gin_files, bindings)
    settings, recipe = build.read_recipe()
    parallel = build.construct("Distributed", gin.get_configurable("Distributed"))
    os.environ["WANDB_MODE"] = "disabled"
    trainer = Trainer(
        scratch / "run", False, settings, recipe, parallel, init_distributed(parallel)
    )
    lock = RunDirectoryLock(scratch / "run")  # the scratch run is this process's alone
    trainer.prepare(bindings, lock)
    lock.release()
    return trainer.learner, itertools.chain([trainer.first_batch], trainer.batches)


def print_spectrum(learner, batches, iterations: int) -> None:
    """Print the extreme eigenvalues of H on each of ``batches``."""
    # The learner's own HVPs (the code path of its solvers) at its pinned forward passes.
    meta, params = learner.meta_network.frozen(), learner.params
    like = [p.detach().cpu() for _, p in params]
    for index, batch in enumerate(batches):
        losses = learner._forward(batch).losses

        def hvp(x: Vectors, losses=losses) -> Vectors:
            moved = [v.to(p.device) for v, (_, p) in zip(x, params, strict=True)]
            return [h.cpu() for h in learner.products.hvp(losses, params, meta, moved)]

        dominant, other = extreme_eigenvalues(hvp, like, iterations, seed=index)
        print(f"batch {index}: largest |eigenvalue| {dominant:.3g}, other end {other:.3g}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_recipe_arguments(parser, required=True)
    parser.add_argument("--batches", type=int, default=3, help="training batches (default 3)")
    parser.add_argument("--iterations", type=int, default=25, help="power steps (default 25)")
    args, extra = parser.parse_known_args(argv)

    def body() -> int:
        bindings = [*args.bindings, *sweep_args_to_bindings(extra)]
        with tempfile.TemporaryDirectory(prefix="hessian-spectrum-") as scratch:
            learner, batches = starting_point(args.gin_files, bindings, Path(scratch))
            print_spectrum(learner, itertools.islice(batches, args.batches), args.iterations)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
