"""The gin entry point ``train``: build everything from the recipe, run, evaluate, checkpoint.

Run directory layout (``run_dir``):

- ``config.gin``: the operative gin config (every parameter actually used);
- ``metrics.jsonl``: one JSON object per log step and per evaluation (see RunLog);
- ``checkpoints/last.pt`` and ``checkpoints/best.pt`` (by ``test/t2v_R@1``; see checkpoint.py);
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

from meltr.models.allinone_checkpoint import load_allinone_checkpoint
from meltr.train.checkpoint import (
    Progress,
    load_checkpoint,
    restore_training_checkpoint,
    save_training_checkpoint,
)
from meltr.train.config import ConfigError, config_to_dict
from meltr.train.data_paths import check_data_paths
from meltr.train.evaluation import evaluate_retrieval
from meltr.train.meters import IntervalMeter
from meltr.train.run_log import RunLog, truncate_metrics

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

    ``checkpoint`` (the ``CHECKPOINT`` macro) initialises the model (and a MELTR-trained meta
    loss) with ``load_allinone_checkpoint``. ``resume`` continues ``run_dir`` from
    ``checkpoints/last.pt`` with the same step, data position, optimizer, schedule and RNG states.
    Paths are checked (ConfigError) before anything is read, built or written.
    """
    check_data_paths(data_dir, vocab, checkpoint, require_checkpoint)
    run_dir = Path(run_dir)
    last_path = run_dir / "checkpoints" / "last.pt"
    if resume and not last_path.is_file():
        raise ConfigError(f"--resume: {last_path} does not exist, nothing to resume")
    for name, every in (("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        if every < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {every}")
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    )
    _seed_everything(seed)

    text_tokenizer = tokenizer(vocab)
    net = model(vocab_size=text_tokenizer.vocab_size).to(device)
    meta_net = meta_loss(num_tasks=len(loss_source.tasks)).to(device)
    if checkpoint is not None and not resume:
        report = load_allinone_checkpoint(net, checkpoint, meta_loss=meta_net)
        print(f"loaded {checkpoint}: {_report_summary(report)}")
    backbone_optimizer = optimizer(net.parameters())
    meta_net_optimizer = None if meta_optimizer is None else meta_optimizer(meta_net.parameters())
    lr_schedule = schedule(backbone_optimizer, total_steps=steps)
    meta_learner = learner(
        model=net,
        meta_loss=meta_net,
        loss_source=loss_source,
        optimizer=backbone_optimizer,
        meta_optimizer=meta_net_optimizer,
    )

    saved = load_checkpoint(last_path) if resume else None
    progress = Progress(batches_consumed=saved["batches_consumed"]) if saved else Progress()
    # The loader is started before the RNG states are restored: starting it may draw from the
    # global RNG, which an uninterrupted run did once, before its first step.
    batches = iter(
        train_data(
            data_dir,
            text_tokenizer,
            batch_size=batch_size,
            seed=seed,
            start_batch=progress.batches_consumed,
        )
    )
    if saved:
        progress = restore_training_checkpoint(
            saved, model=net, learner=meta_learner, schedule=lr_schedule
        )
        truncate_metrics(run_dir, after_step=progress.step)

    def test_loader(view: int | None) -> Any:
        return test_data(
            data_dir, text_tokenizer, batch_size=eval_batch_size or batch_size, view=view
        )

    # Built once now so that a bad evaluation setting fails before training, and so that the
    # operative config below (which lists only configurables already called) is complete.
    test_loader(None)
    config_text = gin.operative_config_str()
    (run_dir / "config.gin").write_text(config_text)
    log = RunLog(run_dir, config_to_dict(config_text), run_dir.name, progress.wandb_run_id)
    progress.wandb_run_id = log.run_id

    def evaluate() -> dict[str, float]:
        return evaluate_retrieval(net, test_loader, device, eval_views)

    def save(name: str) -> None:
        save_training_checkpoint(
            run_dir / "checkpoints" / name,
            model=net,
            learner=meta_learner,
            schedule=lr_schedule,
            progress=progress,
        )

    final_metrics = None
    meter = IntervalMeter(progress.totals)
    with tqdm(total=steps, initial=progress.step, desc="train", dynamic_ncols=True) as bar:
        while progress.step < steps:
            lr = lr_schedule.get_last_lr()[0]
            started = time.perf_counter()
            batch = next(batches)
            progress.batches_consumed += 1
            values = meta_learner.step(_to_device(batch, device))
            lr_schedule.step()
            seconds = time.perf_counter() - started
            progress.step += 1
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
                log.log(step, meter.flush())
            if step % eval_every == 0 or step == steps:
                final_metrics = evaluate()
                log.log(step, final_metrics)
                if progress.best_value is None or final_metrics[BEST_METRIC] > progress.best_value:
                    progress.best_value, progress.best_step = final_metrics[BEST_METRIC], step
                    save("best.pt")
            if step % checkpoint_every == 0 or step == steps:
                save("last.pt")
    if final_metrics is None:  # resumed a finished run
        final_metrics = evaluate()
    log.finish()
    print(f"run directory: {run_dir}")
    print("final test metrics: " + json.dumps(final_metrics, indent=None))
    return final_metrics


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _report_summary(report: Any) -> str:
    counts = {name: len(value) for name, value in asdict(report).items()}
    return ", ".join(f"{count} {name}" for name, count in counts.items())
