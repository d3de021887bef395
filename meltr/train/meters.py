"""Turning the learner's per-step numbers into log records (interval means plus run totals), and
warning about skipped updates."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Mapping

RUN_TOTAL_PREFIX = "skipped/"  # the learner reports these as running totals over the run
META_SECONDS = "meta/seconds"


class IntervalMeter:
    """Accumulates steps between two log records.

    ``flush()`` returns, for the steps since the previous flush: the mean of every number the
    learner reported (a key present only on meta steps is averaged over those steps), ``lr`` (of
    the last step) and ``time/clips_per_s`` (items per second); and, for the whole run:
    ``data/num_corrupt`` (samples
    skipped as corrupt), ``skipped/*`` (updates the learner refused, e.g. non-finite losses) and
    ``time/meta_share`` (fraction of training-step time spent in meta steps).

    ``totals`` holds the run totals and is mutated in place, so a checkpoint that saves it carries
    them over a resume.
    """

    def __init__(self, totals: dict[str, float]):
        self.totals = totals
        for key in ("data/num_corrupt", "time/step_seconds", "time/meta_seconds"):
            totals.setdefault(key, 0.0)
        self._reset()

    def _reset(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._clips = 0
        self._seconds = 0.0
        self._last: dict[str, float] = {}

    def add(
        self,
        values: Mapping[str, float],
        *,
        lr: float,
        num_corrupt: int,
        items: int,
        seconds: float,
    ) -> None:
        """Record one training step: the learner's ``values``, the lr it used, the corrupt samples
        its batch skipped, its batch size ``items`` and its wall time ``seconds``."""
        for key, value in values.items():
            if key.startswith(RUN_TOTAL_PREFIX):
                self.totals[key] = float(value)
                continue
            if key == META_SECONDS:
                self.totals["time/meta_seconds"] += float(value)
            self._sums[key] += float(value)
            self._counts[key] += 1
        self._last = {**values, "lr": lr}
        self.totals["data/num_corrupt"] += num_corrupt
        self.totals["time/step_seconds"] += seconds
        self._clips += items
        self._seconds += seconds

    def summary(self) -> dict[str, str]:
        """Short progress-bar fields: the last step's task losses and the interval's clips/s."""
        fields = {
            key.removeprefix("loss/"): f"{value:.3f}"
            for key, value in self._last.items()
            if key.startswith("loss/")
        }
        fields["clips/s"] = f"{self._clips / max(self._seconds, 1e-9):.1f}"
        return fields

    def flush(self) -> dict[str, float]:
        """The record for the steps since the last flush (see the class docstring); resets them."""
        record = {key: self._sums[key] / self._counts[key] for key in self._sums}
        record["lr"] = self._last.get("lr", float("nan"))
        record["time/clips_per_s"] = self._clips / max(self._seconds, 1e-9)
        record["time/meta_share"] = self.totals["time/meta_seconds"] / max(
            self.totals["time/step_seconds"], 1e-9
        )
        record["data/num_corrupt"] = self.totals["data/num_corrupt"]
        record.update(
            (key, value) for key, value in self.totals.items() if key.startswith(RUN_TOTAL_PREFIX)
        )
        self._reset()
        return record


class SkipWarnings:
    """Warns when the learner skipped an update, naming the step and the non-finite quantity:
    every one of the first ``first`` skips, then every ``every``-th, so a long run of skips does
    not flood the log."""

    def __init__(self, skipped: Mapping[str, int], first: int = 5, every: int = 100) -> None:
        self.first, self.every = first, every
        self._seen = sum(skipped.values())

    def warn_new(self, step: int, skipped: Mapping[str, int], detail: str | None) -> None:
        """Warn if ``skipped`` (the learner's ``{reason: count}``) grew since the last call."""
        total = sum(skipped.values())
        if total == self._seen:
            return
        self._seen = total
        if total <= self.first or total % self.every == 0:
            counts = ", ".join(f"{reason} {count}" for reason, count in skipped.items() if count)
            warnings.warn(
                f"step {step}: an update was skipped ({detail}); {total} skipped so far ({counts})",
                stacklevel=2,
            )
