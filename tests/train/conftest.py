"""The tiny synthetic dataset and a tiny quickstart command line shared by the training tests."""

import pytest
from tiny_recipe import no_network_wandb, tiny_dataset, tiny_quickstart_args  # noqa: F401


@pytest.fixture
def tiny_args(tiny_dataset):  # noqa: F811
    """``tiny_args(output, data_dir=None)``: the quickstart command line shrunk to seconds (in
    the W&B sweep-agent argument style), on the tiny dataset unless ``data_dir`` is given."""

    def args(output, data_dir=None) -> list[str]:
        return tiny_quickstart_args(data_dir or tiny_dataset["root"], tiny_dataset["vocab"], output)

    return args
