"""The tiny synthetic dataset for the tests of tools/compare.py and tools/analyze.py."""

from tiny_recipe import no_network_wandb, tiny_dataset  # noqa: F401  (fixtures)
