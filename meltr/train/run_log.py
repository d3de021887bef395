"""Where training numbers go: ``metrics.jsonl`` in the run directory and Weights & Biases.

Both receive exactly the same dicts. W&B's mode comes from ``WANDB_MODE`` when set; otherwise it is
``online`` when an API key is configured (``WANDB_API_KEY`` or a ``wandb login`` entry in ~/.netrc)
and ``offline`` when not, so a machine without credentials never tries the network.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import wandb

from meltr.atomic_files import write_text_atomically


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else ``online`` with credentials and ``offline`` without."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        has_login = netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        has_login = False
    return "online" if has_login else "offline"


class RunLog:
    """Appends one JSON object per ``log`` call to ``run_dir/metrics.jsonl`` and mirrors it to W&B.

    ``config`` (the flattened operative gin config) becomes the W&B run config; ``resume_id``
    continues an existing W&B run. Non-finite floats are written as JSON ``null``.
    """

    def __init__(
        self,
        run_dir: Path,
        config: Mapping[str, object],
        name: str,
        resume_id: str | None = None,
    ):
        self.path = run_dir / "metrics.jsonl"
        self.last_record: dict | None = None  # the newest record, as the file holds it
        self._wandb = wandb.init(
            dir=str(run_dir),
            config=dict(config),
            name=name,
            mode=wandb_mode(),
            id=resume_id,
            resume="allow" if resume_id else None,
        )

    @property
    def run_id(self) -> str | None:
        """The W&B run id (saved in checkpoints so a resumed run continues it)."""
        return self._wandb.id

    def log(self, step: int, values: Mapping[str, float]) -> None:
        line = _json_line(step, values)
        with self.path.open("a") as file:
            file.write(line)
        self.last_record = json.loads(line)
        self._wandb.log(dict(values), step=step)

    def sync(self) -> None:
        """Make every record logged so far durable (before a checkpoint is saved)."""
        if self.path.exists():
            with self.path.open("a") as file:
                os.fsync(file.fileno())

    def finish(self) -> None:
        self._wandb.finish()


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _json_line(step: int, values: Mapping[str, float]) -> str:
    """One record as a line of a JSON-lines file (non-finite values as ``null``)."""
    record = {"step": step, **{key: _finite_or_none(value) for key, value in values.items()}}
    return json.dumps(record) + "\n"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSON-lines file, in order.

    A torn last line (a run killed while writing it) is dropped with a warning; an unreadable line
    before the last raises ValueError naming the file and the line number.
    """
    path = Path(path)
    numbered = enumerate(path.read_text().splitlines(), 1)
    lines = [(number, line) for number, line in numbered if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if position < len(lines) - 1:
                raise ValueError(f"{path}, line {number}: not a JSON record ({error})") from None
            warnings.warn(f"{path}: dropping the torn last line {number}", stacklevel=2)
    return records


def truncate_jsonl(path: str | os.PathLike, after_step: int, tail: dict | None = None) -> None:
    """Drop the records of steps after ``after_step`` (logged by a run that then crashed before
    its next checkpoint), so a resumed run's file has each step once.

    ``tail`` is the last record the file held when the checkpoint of ``after_step`` was saved
    (the checkpoint keeps it): when the file's copy of it is lost (a torn last line, dropped by
    ``read_jsonl``), it is written back. The file is replaced atomically.
    """
    path = Path(path)
    if not path.exists():
        return
    kept = [record for record in read_jsonl(path) if record["step"] <= after_step]
    if tail is not None and tail["step"] <= after_step and kept[-1:] != [tail]:
        warnings.warn(
            f"{path}: the record of step {tail['step']} was torn; restored from the checkpoint",
            stacklevel=2,
        )
        kept.append(tail)
    write_text_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of a run's ``metrics.jsonl`` (see ``read_jsonl``)."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


class StepLog:
    """``analysis/steps.jsonl`` of a run: one record per training step with the learner's
    per-step numbers (``loss/<task>``, ``dM/dl/<task>``, ``meta_loss``, meta-step values), for
    ``tools/analyze.py``; and ``analysis/meta_loss/step-XXXXXXXX.pt``, snapshots of the meta
    network (``{"state_dict", "tasks"}``) taken at every evaluation."""

    def __init__(
        self, run_dir: Path, resume_after: int | None = None, tail: dict | None = None
    ) -> None:
        self.directory = run_dir / "analysis"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "steps.jsonl"
        if resume_after is not None:
            truncate_jsonl(self.path, resume_after, tail)
        self.last_record: dict | None = None  # the newest record, as the file holds it
        self._file = self.path.open("a")

    def log(self, step: int, values: Mapping[str, float]) -> None:
        line = _json_line(step, values)
        self._file.write(line)
        self.last_record = json.loads(line)

    def flush(self) -> None:
        self._file.flush()

    def sync(self) -> None:
        """Make every record logged so far durable (before a checkpoint is saved)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def snapshot(self, step: int, meta_loss: torch.nn.Module, tasks: list[str]) -> Path:
        path = self.directory / "meta_loss" / f"step-{step:08d}.pt"
        path.parent.mkdir(exist_ok=True)
        torch.save({"state_dict": meta_loss.state_dict(), "tasks": list(tasks)}, path)
        return path

    def close(self) -> None:
        self._file.close()
