"""The tiny synthetic dataset and quickstart command line for the benchmarks' tests."""

from tiny_recipe import no_network_wandb, tiny_args, tiny_dataset  # noqa: F401  (fixtures)
