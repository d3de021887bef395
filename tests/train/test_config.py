import gin
import pytest

from meltr.train.config import ConfigError, config_to_dict, parse_gin, sweep_args_to_bindings


def test_sweep_arguments_become_gin_bindings():
    bindings = sweep_args_to_bindings(
        [
            "--MetaLearner.solver=@Neumann()",
            "--meta/Adam.lr",
            "1e-4",
            "--MetaLearner.gamma=0.2",
            "--train.data_dir=/data/msrvtt",
            "--backbone/AdamW.betas=(0.9, 0.98)",
            "--train.checkpoint=%CHECKPOINT",
            "--DATA_DIR=shards",
        ]
    )
    assert bindings == [
        "MetaLearner.solver = @Neumann()",
        "meta/Adam.lr = 1e-4",
        "MetaLearner.gamma = 0.2",
        "train.data_dir = '/data/msrvtt'",
        "backbone/AdamW.betas = (0.9, 0.98)",
        "train.checkpoint = %CHECKPOINT",
        "DATA_DIR = 'shards'",
    ]


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--MetaLearner.gamma=[0.1,"], "MetaLearner.gamma"),
        (["--MetaLearner.gamma=1e-4x"], "MetaLearner.gamma"),
        (["--outptu=runs/x"], "--outptu"),
        (["stray"], "stray"),
        (["--MetaLearner.gamma"], "MetaLearner.gamma"),
    ],
)
def test_bad_sweep_arguments_name_the_culprit(args, culprit):
    with pytest.raises(ConfigError, match=culprit):
        sweep_args_to_bindings(args)


@gin.configurable("ConfigTestTarget")
def _target(rate=1.0, name="x"):
    return rate, name


def test_parse_gin_applies_bindings_after_files_and_names_bad_ones(tmp_path):
    recipe = tmp_path / "recipe.gin"
    recipe.write_text("ConfigTestTarget.rate = 0.5\nConfigTestTarget.name = 'file'\n")
    parse_gin([str(recipe)], ["ConfigTestTarget.name = 'binding'"])
    assert _target() == (0.5, "binding")
    for bad, culprit in [
        ("NoSuchThing.rate = 1", "NoSuchThing"),
        ("ConfigTestTarget.nope = 1", "nope"),
        ("ConfigTestTarget.rate = [1,", "ConfigTestTarget.rate"),
    ]:
        with pytest.raises(ConfigError, match=culprit):
            parse_gin([str(recipe)], [bad])
    with pytest.raises(ConfigError, match="missing.gin"):
        parse_gin([str(tmp_path / "missing.gin")], [])
    gin.clear_config()


def test_config_to_dict_keeps_types_and_references():
    text = (
        "DATA_DIR = '/d'\nbackbone/AdamW.lr = 3e-4\n"
        "MetaLearner.solver = @Neumann()\ntrain.data_dir = %DATA_DIR\n"
    )
    assert config_to_dict(text) == {
        "DATA_DIR": "/d",
        "backbone/AdamW.lr": 3e-4,
        "MetaLearner.solver": "@Neumann()",
        "train.data_dir": "%DATA_DIR",
    }
