"""``tools/evaluate.py``: a recipe's task metrics of a checkpoint on one split of its data.

    python tools/evaluate.py --gin RECIPE.gin --views 3 \\
      --checkpoint runs/x/checkpoints/best.pt \\
      --gin_param "DATA_DIR='/data/shards'" --gin_param "VOCAB='/data/vocab.txt'"

The checkpoint is one of ours (a ``checkpoints/*.pt`` file or a sharded ``step-*`` directory) or an
official backbone file, read with the recipe's ``Recipe.checkpoint_loader`` under
``train.trust_checkpoint_pickle``. The model, tokenizer, decoder, task and paths are the recipe's
(built as ``tools/train.py`` builds them). ``--views K`` averages K random views where the task
can (default: the recipe's ``train.eval_views``). The metrics, with the number of items scored and
of corrupt samples skipped, are printed and written to ``<checkpoint>.<split>-<K>views.json``.
Exit code 2: configuration error.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import gin

from meltr.backbones.checkpoint import read_file
from meltr.train import build
from meltr.train.cli import add_recipe_arguments, configure, run_command
from meltr.train.config import ConfigError
from meltr.train.recipe import check_paths
from meltr.train.saved_checkpoints import (
    CheckpointError,
    is_training_checkpoint,
    load_model_state,
    load_model_weights,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_recipe_arguments(parser, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--split", default="test", help="the split to evaluate (default: test)")
    parser.add_argument("--views", type=int, default=None, help="random views to average")
    return parser


def load_weights(components: build.Components, checkpoint: Path) -> None:
    """Our checkpoint's model weights, or the official file through the recipe's loader."""
    try:
        if checkpoint.is_dir():
            load_model_weights(checkpoint, components.model)
            return
        content = read_file(checkpoint, components.settings.trust_checkpoint_pickle)
    except (CheckpointError, ValueError) as error:
        raise ConfigError(str(error)) from None
    if is_training_checkpoint(content):
        try:
            load_model_state(components.model, content["model"], checkpoint)
        except CheckpointError as error:
            raise ConfigError(str(error)) from None
    else:
        build.load_official_checkpoint(components, str(checkpoint))


def evaluate_checkpoint(
    checkpoint: Path, split: str, views: int | None
) -> tuple[dict[str, float], int]:
    """Metrics of ``checkpoint`` on ``split`` under the parsed recipe (module docstring), and the
    number of views they average."""
    settings, recipe = build.read_recipe()
    check_paths(settings, needs_vocab=recipe.tokenizer is not None, splits=(split,), training=False)
    if not checkpoint.exists():
        raise ConfigError(f"--checkpoint {checkpoint} does not exist")
    views = settings.eval_views if views is None else views
    if views < 1:
        raise ConfigError(f"--views must be >= 1, got {views}")
    components = build.build(settings, recipe)
    load_weights(components, checkpoint)
    device = build.resolve_device(settings.device)
    model = components.model.to(device)
    eval_loader = gin.get_configurable("eval_loader")
    batch_size = settings.eval_batch_size or settings.batch_size

    def batches(view: int | None):
        return eval_loader(
            settings.data_dir, components.decoder, batch_size=batch_size, split=split, view=view
        )

    metrics = build.construct(
        "--views", components.task.evaluate, model, batches, device, split, views
    )
    return metrics, views


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate from command-line arguments; return the process exit code."""
    args, extra = build_parser().parse_known_args(argv)

    def body() -> int:
        configure(args.gin_files, args.bindings, extra)
        metrics, views = evaluate_checkpoint(args.checkpoint, args.split, args.views)
        output = args.checkpoint.with_name(
            f"{args.checkpoint.name.removesuffix('.pt')}.{args.split}-{views}views.json"
        )
        output.write_text(json.dumps(metrics, indent=2) + "\n")
        print(json.dumps(metrics, indent=2))
        print(f"written to {output}")
        return 0

    return run_command(body)
