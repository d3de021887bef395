"""Fixtures of the UniVL tests: a tiny float64 model in eval mode and a batch."""

import pytest
import torch
from univl_tiny import TINY, tiny_batch

from meltr.backbones.univl import UniVL


@pytest.fixture
def tiny_model() -> UniVL:
    torch.manual_seed(0)
    model = UniVL(**TINY).double().eval()
    # Non-zero biases and head biases, so that every parameter shows in the outputs.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


@pytest.fixture
def batch() -> dict:
    values = tiny_batch()
    values["features"] = values["features"].double()
    values["masked_features"] = values["masked_features"].double()
    return values
