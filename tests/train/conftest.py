"""The tiny synthetic dataset and a tiny quickstart command line shared by the training tests."""

from tiny_recipe import no_network_wandb, tiny_args, tiny_dataset  # noqa: F401  (fixtures)
