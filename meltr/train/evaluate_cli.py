"""``tools/evaluate.py``: retrieval metrics of a checkpoint on a recipe's test shards.

    python tools/evaluate.py --gin gin/allinone_msrvtt.gin --checkpoint runs/x/best.pt \\
      --gin_param "DATA_DIR='/data/msrvtt'" --gin_param "VOCAB='/data/vocab.txt'" --views 3

The checkpoint is one of ours (``checkpoints/*.pt``) or an official All-in-one file (read with
``load_allinone_checkpoint``). The model, tokenizer, test loader and paths are the recipe's
``train.*`` bindings. With ``--views K`` the similarities of K random-frame passes are averaged
(the All-in-one release's protocol); ``--views 1`` uses segment-centre frames. The metrics are
printed and written to ``<checkpoint>.test-<K>views.json``. Exit code 2: configuration error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gin
import torch

from meltr.backbones.allinone.checkpoint import load_allinone_checkpoint
from meltr.tasks.retrieval import evaluate_retrieval
from meltr.train.checkpoint import is_training_checkpoint
from meltr.train.cli import CONFIG_ERROR
from meltr.train.config import ConfigError, parse_gin, sweep_args_to_bindings
from meltr.train.data_paths import check_data_paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--gin", "--gin_file", dest="gin_files", action="append", required=True)
    parser.add_argument("--gin_param", dest="bindings", action="append", default=[])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--views", type=int, default=3, help="random-frame views to average")
    return parser


def recipe_value(name: str, default: Any = None) -> Any:
    """The value the parsed recipe gives parameter ``name`` (``"train.data_dir"``), with macros
    and ``@Name()`` references evaluated and ``@Name`` returned as the configured callable."""
    try:
        value = gin.query_parameter(name)
    except ValueError:
        return default
    if isinstance(value, gin.config.ConfigurableReference):
        function = value.scoped_configurable_fn
        return function() if value.evaluate else function
    return value


def evaluate_checkpoint(checkpoint: Path, views: int) -> dict[str, float]:
    """Metrics of ``checkpoint`` under the parsed recipe (see the module docstring)."""
    data_dir, vocab = recipe_value("train.data_dir"), recipe_value("train.vocab")
    check_data_paths(data_dir, vocab, None, require_checkpoint=False)
    if not checkpoint.is_file():
        raise ConfigError(f"--checkpoint {checkpoint} is not a file")
    if views < 1:
        raise ConfigError(f"--views must be >= 1, got {views}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = recipe_value("train.tokenizer")(vocab)
    model = recipe_value("train.model")(vocab_size=tokenizer.vocab_size)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if is_training_checkpoint(saved):
        model.load_state_dict(saved["model"])
    else:
        load_allinone_checkpoint(model, checkpoint)
    model.to(device)
    test_data = recipe_value("train.test_data")
    batch_size = recipe_value("train.eval_batch_size") or recipe_value("train.batch_size")
    return evaluate_retrieval(
        model,
        lambda view: test_data(data_dir, tokenizer, batch_size=batch_size, view=view),
        device,
        views,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate from command-line arguments; return the process exit code."""
    args, extra = build_parser().parse_known_args(argv)
    try:
        parse_gin(args.gin_files, [*args.bindings, *sweep_args_to_bindings(extra)])
        metrics = evaluate_checkpoint(args.checkpoint, args.views)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return CONFIG_ERROR
    output = args.checkpoint.with_name(f"{args.checkpoint.stem}.test-{args.views}views.json")
    output.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))
    print(f"written to {output}")
    return 0
