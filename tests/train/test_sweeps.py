"""The shipped W&B sweep files pass gin bindings the training command accepts."""

from pathlib import Path

import gin
import pytest
import yaml

from meltr.train import configurables  # noqa: F401  (registers the names the recipes use)
from meltr.train.config import parse_gin, sweep_args_to_bindings

SWEEPS = sorted((Path(__file__).parents[2] / "tools" / "sweeps").glob("*.yaml"))


def _sample(spec):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][-1]
    return spec["min"]


@pytest.mark.parametrize("sweep", SWEEPS, ids=[path.stem for path in SWEEPS])
def test_sweep_parameters_reach_gin(sweep):
    spec = yaml.safe_load(sweep.read_text())
    assert spec["command"] == [
        "${env}",
        "${interpreter}",
        "${program}",
        "--gin",
        "gin/allinone_msrvtt.gin",
        "${args}",
    ]
    chosen = {name: _sample(values) for name, values in spec["parameters"].items()}
    agent_args = [f"--{name}={value}" for name, value in chosen.items()]  # as `wandb agent` does

    parse_gin(["gin/allinone_msrvtt.gin"], sweep_args_to_bindings(agent_args))

    for name, value in chosen.items():
        if "." not in name:  # a macro
            assert gin.query_parameter(f"%{name}") == value
        elif isinstance(value, str) and value.startswith("@"):
            assert str(gin.query_parameter(name)) == value
        else:
            assert gin.query_parameter(name) == value
    gin.clear_config()
