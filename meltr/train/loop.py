"""The training run: build from the recipe, train, evaluate, select, checkpoint, report.

Run directory layout (``run_dir``):

- ``config.gin``: the operative gin config (every parameter actually used);
- ``metrics.jsonl``: one JSON object per log step and per evaluation (see RunLog);
- ``checkpoints/``: ``last`` and ``best`` in the run's format (see checkpointing.py); ``best`` is
  selected on the validation split when the data has one (``val-*.tar``), else on the test split;
- ``results.json``: the final report: test metrics of the last and of the selected checkpoint,
  and the wall time of the training steps (``time``: ``step_seconds``, of which
  ``meta_seconds`` in meta steps; evaluation, checkpoints and batch loading left out);
- ``wandb/``: the W&B run files.

Nothing is created before the whole recipe has been built, every command-line binding has been
checked to be used, and the first training batch has been read; the run directory is then claimed
(``meltr.train.run_directory``). Only a healthy state is checkpointed (``meltr.train.divergence``).
``meltr.train.run`` runs a Trainer as one command.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import gin
import numpy as np
import torch
from tqdm import tqdm

from meltr.learner import NonFiniteParametersError
from meltr.train import build
from meltr.train.checkpointing import (
    Checkpointer,
    CheckpointError,
    Progress,
    Resumed,
    TrainingState,
    restore_rng_state,
    resume,
)
from meltr.train.config import (
    ConfigError,
    check_command_line_bindings,
    config_to_dict,
    warn_unused_file_bindings,
)
from meltr.train.distributed import (
    Distributed,
    DistributedContext,
    assert_replicated,
    gathered_parameters,
    wrap_model,
)
from meltr.train.divergence import TrainingStopped, diverged, unhealthy_reason
from meltr.train.health import HealthMonitor, run_health_monitor
from meltr.train.meters import IntervalMeter, SkipWarnings
from meltr.train.preemption import PreemptionHandler
from meltr.train.recipe import RunSettings, has_split, is_better
from meltr.train.report import results_report, test_metrics
from meltr.train.resume_settings import changed_settings, check_resumed_settings
from meltr.train.run_directory import RunDirectoryLock
from meltr.train.run_log import RunLog, StepLog, truncate_jsonl
from meltr.train.saved_checkpoints import saved_checkpoints, set_aside

METRICS, STEPS = "metrics.jsonl", "analysis/steps.jsonl"


class Trainer:
    """One training run, in the order ``prepare()`` (build, check, restore, read the first batch,
    create the run directory) then ``run()`` (steps, evaluations, checkpoints, report)."""

    def __init__(
        self,
        run_dir: Path,
        resume: bool,
        settings: RunSettings,
        recipe: build.Recipe,
        parallel: Distributed,
        context: DistributedContext,
    ) -> None:
        self.run_dir, self.resume, self.settings, self.recipe = run_dir, resume, settings, recipe
        self.parallel, self.context = parallel, context
        self.sharded = parallel.strategy != "none"
        if settings.batch_size % context.world_size:
            raise ConfigError(
                f"train.batch_size={settings.batch_size} (the global batch) does not divide over "
                f"{context.world_size} ranks"
            )
        self.device = context.device if self.sharded else build.resolve_device(settings.device)
        self.eval_splits = ["val", "test"] if has_split(settings.data_dir, "val") else ["test"]
        self.log: RunLog | None = None
        self.step_log: StepLog | None = None

    # ---------------------------------------------------------------- preparation

    def prepare(self, command_line_bindings: Sequence[str], lock: RunDirectoryLock) -> None:
        settings, recipe = self.settings, self.recipe
        checkpoints = self.run_dir / "checkpoints"
        # --resume of a run that stopped before its first checkpoint starts it again.
        restoring = self.resume and bool(saved_checkpoints(checkpoints))
        if self.resume and not restoring and self.context.is_main:
            print(f"--resume: {checkpoints} holds no checkpoint yet: starting the run from step 0")
        _seed_everything(settings.seed)
        self.components = build.build(settings, recipe)
        if self.components.meta_loss is None:
            raise ConfigError(
                "the loss source has no 'tasks' attribute: give it one (the task names, primary "
                "first), so the meta loss can be built before training"
            )
        if not restoring:
            report = build.load_initial_checkpoint(self.components)
            if report is not None and self.context.is_main:
                print(f"loaded {settings.checkpoint}: {report.summary()}")
        self.model = self.components.model.to(self.device)
        self.meta_loss = self.components.meta_loss.to(self.device)
        self.model = build.construct(
            "Distributed", wrap_model, self.model, self.context, self.parallel
        )
        self.learner, self.lr_schedule = build.build_learner(
            self.recipe, self.settings, self.model, self.meta_loss, self.parallel.strategy
        )
        self.state = TrainingState(self.model, self.learner, self.lr_schedule)
        self.checkpointer = Checkpointer(checkpoints, self.sharded, self.context.is_main)
        self.task = self.components.task

        self.progress, self.resumed = Progress(), None
        if restoring:
            self.resumed = self._restore(checkpoints)
            self.progress = self.resumed.progress
        self.selection = f"{self.eval_splits[0]}/{self.task.selection_metric}"
        self.progress.best_metric = self.selection
        # The loader is started before the RNG states are restored: starting it may draw from
        # the global RNG, which an uninterrupted run did once, before its first step.
        self.batches = self._training_batches()
        check_command_line_bindings(command_line_bindings)
        warn_unused_file_bindings()
        if self.resumed is not None:
            changed = check_resumed_settings(
                (self.run_dir / "config.gin").read_text(), self.progress.step
            )
            if changed and self.context.is_main:
                print("--resume applies the changed settings: " + changed)
        self.first_batch = next(self.batches)
        if self.resumed is not None:
            restore_rng_state(self.resumed.rng)
        self._create_run_directory(lock)

    def _restore(self, checkpoints: Path) -> Resumed:
        """The newest valid checkpoint restored into the run; ConfigError naming every file (and
        the settings changed since, a likely reason) when none fits."""
        try:
            resumed = resume(checkpoints, self.state, self.sharded)
        except CheckpointError as error:
            changed = changed_settings((self.run_dir / "config.gin").read_text())
            hint = f"; settings changed since it was saved: {changed}" if changed else ""
            raise ConfigError(f"{error}{hint}") from None
        if self.context.is_main:
            print(f"resuming from {resumed.used} at step {resumed.progress.step}")
        return resumed

    def _training_batches(self) -> Iterator[dict]:
        loader = build.construct(
            "train_loader",
            gin.get_configurable("train_loader"),
            self.settings.data_dir,
            self.components.decoder,
            batch_size=self.settings.batch_size // self.context.world_size,
            transforms=self.components.transforms,
            seed=self.settings.seed,
            start_batch=self.progress.batches_consumed,
        )
        # Built once now so that a bad evaluation setting fails before training starts.
        for split in self.eval_splits:
            self._eval_batches(split, None)
        return iter(loader)

    def _eval_batches(self, split: str, view: int | None) -> Any:
        batch_size = self.settings.eval_batch_size or self.settings.batch_size
        return build.construct(
            "eval_loader",
            gin.get_configurable("eval_loader"),
            self.settings.data_dir,
            self.components.decoder,
            batch_size=batch_size,
            split=split,
            view=view,
        )

    def _create_run_directory(self, lock: RunDirectoryLock) -> None:
        """Claim the run directory (``RunDirectoryLock``), set aside the checkpoints a resume
        skipped, write ``config.gin`` and open the logs (a resumed run's cut back to its
        checkpoint's step)."""
        if not self.context.is_main:
            return
        lock.acquire(fresh=not self.resume)
        for saved, reason in self.resumed.skipped if self.resumed is not None else []:
            print(f"set aside {saved.path} ({reason}): {set_aside(saved, 'unusable')}")
        config_text = gin.operative_config_str()
        (self.run_dir / "config.gin").write_text(config_text)
        tail = self.progress.log_tail
        if self.resume:
            truncate_jsonl(self.run_dir / METRICS, self.progress.step, tail.get(METRICS))
        resume_after = self.progress.step if self.resume else None
        self.step_log = StepLog(self.run_dir, resume_after, tail.get(STEPS))
        self.log = RunLog(
            self.run_dir, config_to_dict(config_text), self.run_dir.name, self.progress.wandb_run_id
        )
        self.progress.wandb_run_id = self.log.run_id
        if self.eval_splits == ["test"]:
            print(
                f"no validation split (no val-*.tar in {self.settings.data_dir}): the best "
                f"checkpoint is selected on {self.selection}, so its test numbers are optimistic"
            )

    # ---------------------------------------------------------------- the run

    def evaluate(self) -> dict[str, float]:
        """Every evaluation split's metrics (the validation split first, when there is one)."""
        metrics: dict[str, float] = {}
        with gathered_parameters(self.model):
            for split in self.eval_splits:
                metrics |= self.task.evaluate(
                    self.model,
                    lambda view, split=split: self._eval_batches(split, view),
                    self.device,
                    split,
                    self.settings.eval_views,
                )
        return metrics

    def run(self) -> dict[str, Any]:
        settings, progress, learner = self.settings, self.progress, self.learner
        meter = IntervalMeter(progress.totals)
        skips = SkipWarnings(learner.skipped)
        health = self._health_monitor()
        final_metrics = None
        bar = tqdm(
            total=settings.steps,
            initial=progress.step,
            desc="train",
            dynamic_ncols=True,
            disable=not self.context.is_main,
        )
        with bar, PreemptionHandler(device=self.device) as preemption:
            while progress.step < settings.steps:
                batch = self.first_batch if self.first_batch is not None else next(self.batches)
                self.first_batch = None
                lr = self.lr_schedule.get_last_lr()[0]
                started = time.perf_counter()
                progress.batches_consumed += 1
                try:
                    values = learner.step(_to_device(batch, self.device))
                except NonFiniteParametersError as error:
                    raise self._stopped(
                        f"{error}; the run stopped at step {progress.step + 1}",
                        last_applied=progress.step - learner.consecutive_skips,
                    ) from None
                self.lr_schedule.step()
                progress.step += 1
                self._check_skips(skips, progress.step)
                if self.parallel.debug_checks and "meta/L_pri" in values:
                    assert_replicated(self.meta_loss.parameters(), learner.step_count)
                meter.add(
                    values,
                    lr=lr,
                    num_corrupt=batch["num_corrupt"],
                    items=_batch_size(batch),
                    seconds=time.perf_counter() - started,
                )
                bar.update(1)
                bar.set_postfix(meter.summary(), refresh=False)
                if self.step_log is not None:
                    self.step_log.log(progress.step, values)

                step = progress.step
                if step % settings.log_every == 0 or step == settings.steps:
                    interval = meter.flush()
                    self._log(step, interval | health.check(step, interval))
                if step % settings.eval_every == 0 or step == settings.steps:
                    final_metrics = self._evaluate_and_select(step)
                if step % settings.checkpoint_every == 0 or step == settings.steps:
                    self._save("last")
                elif preemption.stop_requested():
                    if not self._save("last") and self.context.is_main:
                        print(f"the state of step {step} is not saved (see the warning above)")
                    break
        return self._finish(final_metrics)

    def _save(self, name: str) -> bool:
        """Save checkpoint ``name`` (a collective in a sharded run) when the run is healthy
        (``meltr.train.divergence``), with the logs made durable first and their last records
        kept in it (``Progress.log_tail``: a torn last line is restored on resume); else warn
        why not. Returns whether it was saved."""
        learner = self.learner
        reason = unhealthy_reason(learner.consecutive_skips, learner.last_skip)
        if reason is not None:
            if self.context.is_main:
                warnings.warn(
                    f"step {self.progress.step}: the {name} checkpoint is not saved: {reason}; "
                    "the last good checkpoint is kept",
                    stacklevel=2,
                )
            return False
        tail = {}
        for path, log in ((METRICS, self.log), (STEPS, self.step_log)):
            if log is not None:
                log.sync()
                if log.last_record is not None:
                    tail[path] = log.last_record
        self.progress.log_tail = tail or self.progress.log_tail
        self.checkpointer.save(name, self.state, self.progress)
        return True

    def _check_skips(self, skips: SkipWarnings, step: int) -> None:
        skips.warn_new(step, self.learner.skipped, self.learner.last_skip)
        limit, skipped = self.settings.max_consecutive_skips, self.learner.consecutive_skips
        if skipped >= limit:
            raise self._stopped(
                f"{skipped} inner updates in a row were skipped for non-finite values "
                f"(train.max_consecutive_skips = {limit}; last: {self.learner.last_skip}): the "
                f"run diverged at step {step - skipped + 1} and stopped at step {step}",
                last_applied=step - skipped,
            )

    def _stopped(self, what: str, last_applied: int) -> TrainingStopped:
        return diverged(what, self.run_dir / "checkpoints", last_applied, self.context.is_main)

    def _health_monitor(self) -> HealthMonitor:
        """The health checks of this run; their state lives in (and resumes from) the progress."""
        return run_health_monitor(
            self.recipe.loss_source, self.learner, self.settings, self.progress.health
        )

    def _evaluate_and_select(self, step: int) -> dict[str, float]:
        """Evaluate; a new best is selected (and saved) only in a healthy state."""
        progress = self.progress
        try:
            metrics = self.evaluate()
        except BaseException:
            self._save("last")  # no training step is lost
            raise
        self._log(step, metrics)
        if self.step_log is not None:
            self.step_log.flush()
            self.step_log.snapshot(step, self.meta_loss, self.learner.keys or [])
        healthy = self.learner.consecutive_skips == 0
        if healthy and is_better(
            metrics[self.selection], progress.best_value, self.task.higher_is_better
        ):
            progress.best_value, progress.best_step = metrics[self.selection], step
            progress.best_metrics = dict(metrics)
            self._save("best")
        return metrics

    def _log(self, step: int, values: Mapping[str, float]) -> None:
        if self.log is not None:
            self.log.log(step, values)
        if self.step_log is not None:
            self.step_log.flush()

    def _finish(self, final_metrics: dict[str, float] | None) -> dict[str, Any]:
        progress, is_main = self.progress, self.context.is_main
        if self.step_log is not None:
            self.step_log.close()
        if progress.step < self.settings.steps:
            if self.log is not None:
                self.log.finish()
            if is_main:
                print(f"stopped by a signal at step {progress.step}; continue with --resume")
            return {}
        if final_metrics is None:  # resumed a finished run
            final_metrics = self.evaluate()
        report = results_report(self.selection, self.task.higher_is_better, progress, final_metrics)
        if self.log is not None:
            self.log.finish()
        if is_main:
            (self.run_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
            print(f"run directory: {self.run_dir}")
            print("final test metrics: " + json.dumps(test_metrics(final_metrics)))
            print(
                f"selected checkpoint (best {self.selection} = {progress.best_value} at step "
                f"{progress.best_step}) test metrics: "
                + json.dumps(test_metrics(progress.best_metrics))
            )
        return report


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _batch_size(batch: Mapping[str, Any]) -> int:
    """The number of items in a batch (the length of its first tensor or list)."""
    for value in batch.values():
        if isinstance(value, list) or (torch.is_tensor(value) and value.dim() > 0):
            return len(value)
    return 0
