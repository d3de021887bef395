"""``tools/inspect_checkpoint.py``: what a recipe's checkpoint loader makes of a file, as JSON.

    python tools/inspect_checkpoint.py --gin RECIPE.gin --checkpoint FILE \\
      --gin_param "VOCAB='/data/vocab.txt'"

Builds the recipe's model (as ``tools/train.py`` does; the tokenizer only for the vocabulary size),
runs ``Recipe.checkpoint_loader`` on FILE (or on a checkpoint folder, e.g. a Hugging Face one)
under ``train.trust_checkpoint_pickle`` and prints its report: the keys loaded, missing (model
keys the file lacks), unexpected (file keys the model lacks), adapted and ignored. One of our
training checkpoints is compared with the model's own keys. No training, no data read:
``DATA_DIR`` may be an empty folder. Exit code 2: configuration error or a file that does not fit.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from meltr.backbones.checkpoint import LoadReport, read_file
from meltr.train import build
from meltr.train.cli import add_recipe_arguments, configure, run_command
from meltr.train.config import ConfigError
from meltr.train.saved_checkpoints import is_training_checkpoint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_recipe_arguments(parser, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True)
    return parser


def inspect_checkpoint(checkpoint: Path) -> dict:
    """The loader's report on ``checkpoint`` for the parsed recipe's model (module docstring)."""
    if not checkpoint.exists():
        raise ConfigError(f"--checkpoint {checkpoint} is not a file or a folder")
    settings, recipe = build.read_recipe()
    if recipe.tokenizer is not None and (
        settings.vocab is None or not Path(settings.vocab).is_file()
    ):
        raise ConfigError(
            f"VOCAB (train.vocab) = {settings.vocab!r} must be the vocabulary file: the model's "
            "vocabulary size comes from it"
        )
    components = build.build(settings, recipe)
    try:
        content = (
            None if checkpoint.is_dir() else read_file(checkpoint, settings.trust_checkpoint_pickle)
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if content is not None and is_training_checkpoint(content):
        result = components.model.load_state_dict(content["model"], strict=False)
        own = set(components.model.state_dict())
        report = LoadReport(
            loaded=sorted(own - set(result.missing_keys)),
            missing=list(result.missing_keys),
            unexpected=list(result.unexpected_keys),
        )
    else:
        report = build.load_official_checkpoint(
            components, str(checkpoint), settings.checkpoint_meta_loss
        )
    return {
        "checkpoint": str(checkpoint),
        "model": type(components.model).__name__,
        "summary": report.summary(),
        **asdict(report),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Inspect from command-line arguments; return the process exit code."""
    args, extra = build_parser().parse_known_args(argv)

    def body() -> int:
        configure(args.gin_files, args.bindings, extra)
        print(json.dumps(inspect_checkpoint(args.checkpoint), indent=2))
        return 0

    return run_command(body)
