"""Command lines of the Violet quick recipes shrunk to seconds."""

from __future__ import annotations

from pathlib import Path

from tiny_recipe import LOOP_SHRINK, META_SHRINK

# A smaller tiny Violet than the recipe's (width 32, one cross layer, one Swin block a stage)
# and a MELTR step every second update.
SHRINK = (
    {
        "Violet.width": 32,
        "Violet.cross_layers": 1,
        "Violet.cross_heads": 2,
        "Violet.cross_inner": 32,
        "Violet.swin_embed_dim": 16,
        "Violet.swin_depths": "(1, 1)",
        "Violet.swin_heads": "(1, 2)",
    }
    | META_SHRINK
    | LOOP_SHRINK
)
DATASET = {"num_train": 16, "num_val": 4, "num_test": 8, "workers": 1}


def quick_args(recipe: str, output: Path, data: dict | None = None, **extra) -> list[str]:
    """``tools/train.py`` arguments: ``recipe`` shrunk; on the shards of ``data`` (the paths
    ``generate_synthetic_qa`` returns) if given, else on the recipe's generated dataset shrunk
    (``violet_synthetic_qa.*``)."""
    bindings = dict(SHRINK, **extra)
    if data is None:
        bindings |= {f"violet_synthetic_qa.{name}": value for name, value in DATASET.items()}
    else:
        bindings |= {"DATA_DIR": data["root"], "VOCAB": data["vocab"]}
    return ["--gin", recipe, "--output", str(output)] + [
        f"--{name}={value}" for name, value in bindings.items()
    ]
