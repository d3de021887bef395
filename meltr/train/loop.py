"""The gin entry point ``train``: build everything from the recipe, run, evaluate, checkpoint.

Run directory layout (``run_dir``):

- ``config.gin``: the operative gin config (every parameter actually used);
- ``metrics.jsonl``: one JSON object per log step and per evaluation (see RunLog);
- ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (by ``test/t2v_R@1``; see checkpoint.py),
  or, in a distributed run (``Distributed.strategy`` "ddp" / "fsdp" under torchrun), the sharded
  ``checkpoints/last/`` and ``checkpoints/best/`` (see sharded_checkpoint.py);
- ``wandb/``: the W&B run files.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gin
import numpy as np
import torch
from tqdm import tqdm

from meltr.backbones.allinone.checkpoint import load_allinone_checkpoint
from meltr.tasks.retrieval import evaluate_retrieval
from meltr.train.checkpoint import (
    Progress,
    load_checkpoint,
    restore_rng_state,
    restore_training_checkpoint,
    save_training_checkpoint,
)
from meltr.train.config import ConfigError, config_to_dict
from meltr.train.data_paths import check_data_paths
from meltr.train.distributed import (
    Distributed,
    assert_replicated,
    check_meta_learning_supported,
    gathered_parameters,
    init_distributed,
    mean_over_ranks,
    reduced_loss_source,
    shutdown_distributed,
    wrap_model,
)
from meltr.train.meters import IntervalMeter
from meltr.train.preemption import PreemptionHandler
from meltr.train.run_log import RunLog, truncate_metrics
from meltr.train.sharded_checkpoint import (
    latest_checkpoint,
    restore_training_state,
    save_training_state,
)

BEST_METRIC = "test/t2v_R@1"


@gin.configurable(denylist=["run_dir", "resume"])
def train(
    run_dir: str | Path,
    resume: bool = False,
    *,
    steps: int,
    batch_size: int,
    eval_every: int,
    checkpoint_every: int,
    seed: int = 0,
    log_every: int = 10,
    data_dir: str | None = None,
    vocab: str | None = None,
    checkpoint: str | None = None,
    require_checkpoint: bool = False,
    trust_checkpoint_pickle: bool = False,
    checkpoint_meta_loss: bool = False,
    tokenizer: Callable,
    model: Callable[..., torch.nn.Module],
    loss_source: Callable,
    meta_loss: Callable[..., torch.nn.Module],
    learner: Callable,
    optimizer: Callable[..., torch.optim.Optimizer],
    meta_optimizer: Callable[..., torch.optim.Optimizer] | None,
    schedule: Callable,
    train_data: Callable[..., Any],
    test_data: Callable[..., Any],
    eval_batch_size: int | None = None,
    eval_views: int = 1,
    device: str = "auto",
) -> dict[str, float]:
    """Fine-tune ``model`` on ``loss_source`` with a MetaLearner; return the final test metrics.

    Factories (gin references without ``()``), called here in this order after seeding:
    ``tokenizer(vocab)``; ``model(vocab_size=tokenizer.vocab_size)``; ``meta_loss(num_tasks=
    len(loss_source.tasks))``; ``optimizer(model.parameters())``; ``meta_optimizer(meta_loss.
    parameters())`` (None: a fixed meta loss, the baselines); ``schedule(optimizer, total_steps=
    steps)``; ``learner(model=, meta_loss=, loss_source=, optimizer=, meta_optimizer=)``;
    ``train_data(data_dir, tokenizer, batch_size=, seed=, start_batch=)`` (an infinite iterable);
    ``test_data(data_dir, tokenizer, batch_size=, view=)`` (one pass over the test split).

    ``checkpoint`` (the ``CHECKPOINT`` macro) initialises the model with
    ``load_allinone_checkpoint``, and also the meta loss from the file's ``aux_model.*`` (a
    MELTR-trained checkpoint) when ``checkpoint_meta_loss``. ``trust_checkpoint_pickle=True``
    lets the loader unpickle a file that also holds Python objects (old Lightning ``.ckpt`` files
    do; only for files you trust). ``resume`` continues ``run_dir`` from ``checkpoints/last.pt``
    with the same step, data position, optimizer, schedule and RNG states.
    Paths are checked (ConfigError) before anything is read, built or written.

    Under torchrun with ``Distributed.strategy`` "ddp" or "fsdp", ``batch_size`` is the global
    batch (split evenly over the ranks), every rank reads its own data, the loss values the meta
    network sees are global-batch values, checkpoints are sharded, and only rank 0 logs. SIGTERM
    or SIGUSR1 makes every rank checkpoint at the next step boundary and return; ``resume``
    continues from there (at the same or another world size).
    """
    check_data_paths(data_dir, vocab, checkpoint, require_checkpoint)
    parallel = Distributed()
    run_dir = Path(run_dir)
    sharded = parallel.strategy != "none"
    last_path = run_dir / "checkpoints" / ("last" if sharded else "last.pt")
    resume_from = (latest_checkpoint(last_path) if sharded else last_path) if resume else None
    if resume and (resume_from is None or not resume_from.exists()):
        raise ConfigError(f"--resume: {last_path} does not exist, nothing to resume")
    for name, every in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        if every < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {every}")
    context = init_distributed(parallel)
    try:
        if batch_size % context.world_size:
            raise ConfigError(
                f"train.batch_size={batch_size} (the global batch) does not divide over "
                f"{context.world_size} ranks"
            )
        if context.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        if sharded:
            device = context.device
        else:
            device = torch.device(
                ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
            )
        _seed_everything(seed)

        text_tokenizer = tokenizer(vocab)
        net = model(vocab_size=text_tokenizer.vocab_size).to(device)
        meta_net = meta_loss(num_tasks=len(loss_source.tasks)).to(device)
        if checkpoint is not None and not resume:
            report = load_allinone_checkpoint(
                net,
                checkpoint,
                meta_loss=meta_net if checkpoint_meta_loss else None,
                trust_pickle=trust_checkpoint_pickle,
            )
            if context.is_main:
                print(f"loaded {checkpoint}: {_report_summary(report)}")
        net = wrap_model(net, context, parallel)
        backbone_optimizer = optimizer(net.parameters())
        meta_net_optimizer = (
            None if meta_optimizer is None else meta_optimizer(meta_net.parameters())
        )
        lr_schedule = schedule(backbone_optimizer, total_steps=steps)
        meta_learner = learner(
            model=net,
            meta_loss=meta_net,
            loss_source=reduced_loss_source(loss_source) if sharded else loss_source,
            optimizer=backbone_optimizer,
            meta_optimizer=meta_net_optimizer,
            **({"reduce": mean_over_ranks} if sharded else {}),
        )
        try:
            check_meta_learning_supported(
                parallel.strategy, meta_learner.products.name, meta_learner.solver
            )
        except ValueError as error:
            raise ConfigError(str(error)) from error

        saved = load_checkpoint(last_path) if resume and not sharded else None
        progress = Progress(batches_consumed=saved["batches_consumed"]) if saved else Progress()
        saved_rng = None
        if resume and sharded:
            progress, saved_rng = restore_training_state(
                resume_from, model=net, learner=meta_learner, schedule=lr_schedule
            )
        # The loader is started before the RNG states are restored: starting it may draw from
        # the global RNG, which an uninterrupted run did once, before its first step.
        batches = iter(
            train_data(
                data_dir,
                text_tokenizer,
                batch_size=batch_size // context.world_size,
                seed=seed,
                start_batch=progress.batches_consumed,
            )
        )
        if saved:
            progress = restore_training_checkpoint(
                saved, model=net, learner=meta_learner, schedule=lr_schedule
            )
        if saved_rng is not None:
            restore_rng_state(saved_rng)
        if resume and context.is_main:
            truncate_metrics(run_dir, after_step=progress.step)

        def test_loader(view: int | None) -> Any:
            return test_data(
                data_dir, text_tokenizer, batch_size=eval_batch_size or batch_size, view=view
            )

        # Built once now so that a bad evaluation setting fails before training, and so that
        # the operative config below (which lists only configurables already called) is
        # complete.
        test_loader(None)
        log = None
        if context.is_main:
            config_text = gin.operative_config_str()
            (run_dir / "config.gin").write_text(config_text)
            log = RunLog(run_dir, config_to_dict(config_text), run_dir.name, progress.wandb_run_id)
            progress.wandb_run_id = log.run_id

        def evaluate() -> dict[str, float]:
            with gathered_parameters(net):
                return evaluate_retrieval(net, test_loader, device, eval_views)

        def save(name: str) -> None:
            if sharded:
                save_training_state(
                    run_dir / "checkpoints" / name,
                    model=net,
                    learner=meta_learner,
                    schedule=lr_schedule,
                    progress=progress,
                    keep=1,
                )
            else:
                save_training_checkpoint(
                    run_dir / "checkpoints" / f"{name}.pt",
                    model=net,
                    learner=meta_learner,
                    schedule=lr_schedule,
                    progress=progress,
                )

        final_metrics = None
        meter = IntervalMeter(progress.totals)
        bar = tqdm(
            total=steps,
            initial=progress.step,
            desc="train",
            dynamic_ncols=True,
            disable=not context.is_main,
        )
        with bar, PreemptionHandler(device=device) as preemption:
            while progress.step < steps:
                lr = lr_schedule.get_last_lr()[0]
                started = time.perf_counter()
                batch = next(batches)
                progress.batches_consumed += 1
                values = meta_learner.step(_to_device(batch, device))
                lr_schedule.step()
                seconds = time.perf_counter() - started
                progress.step += 1
                if parallel.debug_checks and "meta/L_pri" in values:
                    assert_replicated(meta_net.parameters(), meta_learner.step_count)
                meter.add(
                    values,
                    lr=lr,
                    num_corrupt=batch["num_corrupt"],
                    clips=len(batch["video_id"]),
                    seconds=seconds,
                )
                bar.update(1)
                bar.set_postfix(meter.summary(), refresh=False)

                step = progress.step
                if step % log_every == 0 or step == steps:
                    interval = meter.flush()
                    if log is not None:
                        log.log(step, interval)
                if step % eval_every == 0 or step == steps:
                    final_metrics = evaluate()
                    if log is not None:
                        log.log(step, final_metrics)
                    best = progress.best_value
                    if best is None or final_metrics[BEST_METRIC] > best:
                        progress.best_value, progress.best_step = final_metrics[BEST_METRIC], step
                        save("best")
                if step % checkpoint_every == 0 or step == steps:
                    save("last")
                elif preemption.stop_requested():
                    save("last")
                    break
        stopped = progress.step < steps
        if stopped:
            if context.is_main:
                print(f"stopped by a signal at step {progress.step}; continue with --resume")
        elif final_metrics is None:  # resumed a finished run
            final_metrics = evaluate()
        if log is not None:
            log.finish()
        if context.is_main:
            print(f"run directory: {run_dir}")
            if not stopped:
                print("final test metrics: " + json.dumps(final_metrics, indent=None))
        return final_metrics or {}
    finally:
        shutdown_distributed()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _report_summary(report: Any) -> str:
    counts = {name: len(value) for name, value in asdict(report).items()}
    return ", ".join(f"{count} {name}" for name, count in counts.items())
