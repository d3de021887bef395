"""A finished run's analysis files, as ``tools/analyze.py`` reads them.

The training loop writes into ``RUN_DIR/analysis/``: ``steps.jsonl`` (every step's losses and, when
the meta network was differentiated, dM/dl per task) and ``meta_loss/step-XXXXXXXX.pt`` (snapshots
of the meta network: its ``state_dict`` and ``tasks``); ``RUN_DIR/config.gin`` rebuilds that
network. Every reader raises ``AnalysisError`` (exit 2) naming the file that lacks what the
analysis needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gin
import numpy as np
import torch
from torch import nn

from meltr.train import build
from meltr.train.config import ConfigError, parse_gin
from meltr.train.run_log import read_jsonl

ANALYSIS = "analysis"
STEPS = f"{ANALYSIS}/steps.jsonl"
SNAPSHOTS = f"{ANALYSIS}/meta_loss"


class AnalysisError(ConfigError):
    """The run directory lacks what the analysis needs, or an option does not fit it (exit 2)."""


@dataclass(frozen=True)
class StepRecords:
    """The per-step series of ``analysis/steps.jsonl``.

    ``tasks`` in logged order (primary first); ``steps`` ``[N]``; ``losses[t]`` and
    ``dmeta_dl[t]`` ``[N]`` float64, NaN where a record has null or lacks the key. ``dmeta_dl``
    holds only the tasks whose dM/dl was logged at least once.
    """

    tasks: list[str]
    steps: np.ndarray
    losses: dict[str, np.ndarray]
    dmeta_dl: dict[str, np.ndarray]


def read_steps(run_dir: Path) -> StepRecords:
    """The run's ``analysis/steps.jsonl``; AnalysisError naming the file when it is missing or
    has no ``loss/<task>`` with a finite value."""
    path = run_dir / STEPS
    if not path.is_file():
        raise AnalysisError(f"{path} does not exist: not a run directory written by tools/train.py")
    records = read_jsonl(path)
    keys = list(dict.fromkeys(key for record in records for key in record))
    tasks = [key.removeprefix("loss/") for key in keys if key.startswith("loss/")]
    if not tasks:
        raise AnalysisError(f"{path} has no loss/<task> values")

    def column(key: str) -> np.ndarray:
        return np.array([record.get(key) for record in records], dtype=np.float64)

    losses = {task: column(f"loss/{task}") for task in tasks}
    for task, values in losses.items():
        if not np.isfinite(values).any():
            raise AnalysisError(f"{path}: loss/{task} has no finite value")
    return StepRecords(
        tasks=tasks,
        steps=np.array([record["step"] for record in records], dtype=np.int64),
        losses=losses,
        dmeta_dl={task: column(f"dM/dl/{task}") for task in tasks if f"dM/dl/{task}" in keys},
    )


def find_snapshot(run_dir: Path, step: int | None = None) -> Path | None:
    """The snapshot of ``step``, or the newest one when ``step`` is None (None when there are
    none). AnalysisError listing the snapshots when ``step`` has none."""
    directory = run_dir / SNAPSHOTS
    paths = sorted(directory.glob("step-*.pt")) if directory.is_dir() else []
    if step is None:
        return paths[-1] if paths else None
    path = directory / f"step-{step:08d}.pt"
    if not path.is_file():
        names = ", ".join(p.name for p in paths) or "none"
        raise AnalysisError(f"{path} does not exist (snapshots: {names})")
    return path


def snapshot_step(path: Path) -> int:
    """The training step of a snapshot file ``step-XXXXXXXX.pt``."""
    return int(path.stem.removeprefix("step-"))


def load_meta_loss(config: Path, snapshot: Path, tasks: list[str]) -> nn.Module:
    """The meta network of the run: ``Recipe.meta_loss(num_tasks=len(tasks))`` from ``config``
    (a run's config.gin) with the ``snapshot``'s weights, in float64 and eval mode.

    AnalysisError when the snapshot's tasks differ from ``tasks`` (steps.jsonl's), the config does
    not bind ``Recipe.meta_loss`` or the weights do not fit the network it builds.
    """
    saved = torch.load(snapshot, map_location="cpu", weights_only=True)
    if saved["tasks"] and list(saved["tasks"]) != tasks:
        raise AnalysisError(f"{snapshot} has tasks {saved['tasks']}, steps.jsonl has {tasks}")
    parse_gin([str(config)], [], saved=True)
    try:
        reference = gin.query_parameter("Recipe.meta_loss")
    except ValueError:
        reference = None
    if not isinstance(reference, gin.config.ConfigurableReference):
        raise AnalysisError(f"{config} does not bind Recipe.meta_loss to a configurable")
    factory = gin.get_configurable(reference.scoped_selector)
    network = build.construct("Recipe.meta_loss", factory, num_tasks=len(tasks))
    try:
        network.load_state_dict(saved["state_dict"])
    except RuntimeError as error:
        raise AnalysisError(
            f"{snapshot} does not fit the meta network of {config}: {error}"
        ) from None
    return network.to(torch.float64).eval()
