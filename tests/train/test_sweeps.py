"""The shipped W&B sweep files pass gin bindings the training command accepts."""

from pathlib import Path

import gin
import pytest
import yaml

from meltr.train import configurables  # noqa: F401  (registers the names the recipes use)
from meltr.train.cli import build_parser
from meltr.train.config import parse_gin, sweep_args_to_bindings

SWEEPS = sorted((Path(__file__).parents[2] / "tools" / "sweeps").glob("*.yaml"))


def _sample(spec):
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return spec["values"][-1]
    return spec["min"]


@pytest.mark.parametrize("sweep", SWEEPS, ids=[path.stem for path in SWEEPS])
def test_sweep_optimises_the_validation_split(sweep):
    spec = yaml.safe_load(sweep.read_text())
    assert spec["metric"]["name"].startswith("val/")
    assert "--val" in sweep.read_text()  # says how to make the data's val split


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
    parameters = dict(spec["parameters"])
    # `gin` adds a file (`--gin=FILE`, parsed by the command line): every one must parse.
    files = parameters.pop("gin", {"values": [None]})
    chosen = {name: _sample(values) for name, values in parameters.items()}
    agent_args = [f"--{name}={value}" for name, value in chosen.items()]  # as `wandb agent` does
    for extra in files.get("values", [files.get("value")]):
        recipe = ["gin/allinone_msrvtt.gin"] + ([extra] if extra else [])
        parse_gin(recipe, sweep_args_to_bindings(agent_args))
        for name, value in chosen.items():
            if "." not in name:  # a macro
                assert gin.query_parameter(f"%{name}") == value
            elif isinstance(value, str) and value.startswith("@"):
                assert str(gin.query_parameter(name)) == value
            else:
                assert gin.query_parameter(name) == value
        gin.clear_config()


def test_a_gin_parameter_adds_a_file_after_the_recipe():
    args, extra = build_parser().parse_known_args(
        ["--gin", "gin/allinone_msrvtt.gin", "--gin=gin/solvers/cg.gin", "--MetaLearner.gamma=0.1"]
    )
    assert args.gin_files == ["gin/allinone_msrvtt.gin", "gin/solvers/cg.gin"]
    assert sweep_args_to_bindings(extra) == ["MetaLearner.gamma = 0.1"]
