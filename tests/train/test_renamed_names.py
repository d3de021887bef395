"""Gin names renamed since runs were started: refused in recipes and command lines (naming the new
name), read as the new names in a run's saved config.gin, so a run in flight still resumes."""

import shutil

import gin
import pytest
import torch

from meltr.train.cli import main
from meltr.train.config import (
    RENAMED_BINDINGS,
    RENAMED_VALUES,
    ConfigError,
    parse_gin,
    upgrade_saved_config,
)

OLD_CONFIG = """# Parameters for Recipe:
meltr.train.recipe.Recipe.schedule = @warmup_linear_schedule
Recipe.learner = @MetaLearner
# Parameters for Distributed:
Distributed.strategy = "ddp"
scope/Distributed.strategy = 'ddp'
MetaLearner.schedule = 'release'
"""


def test_the_renames_are_the_documented_ones():
    assert RENAMED_BINDINGS == {"Recipe.schedule": "Recipe.lr_schedule"}
    assert RENAMED_VALUES == {("Distributed.strategy", "ddp"): "replicate"}


def test_a_saved_config_is_rewritten_to_the_new_names():
    upgraded, applied = upgrade_saved_config(OLD_CONFIG)
    assert upgraded == (
        "# Parameters for Recipe:\n"
        "meltr.train.recipe.Recipe.lr_schedule = @warmup_linear_schedule\n"
        "Recipe.learner = @MetaLearner\n"
        "# Parameters for Distributed:\n"
        'Distributed.strategy = "replicate"\n'
        "scope/Distributed.strategy = 'replicate'\n"
        "MetaLearner.schedule = 'release'\n"  # the learner's own argument is not renamed
    )
    assert applied == [
        "Recipe.schedule was renamed Recipe.lr_schedule",
        "Distributed.strategy = 'ddp' was renamed 'replicate'",
        "Distributed.strategy = 'ddp' was renamed 'replicate'",
    ]
    assert upgrade_saved_config(upgraded) == (upgraded, [])


@pytest.mark.parametrize(
    ("text", "new"),
    [
        ("Recipe.schedule = @constant_schedule\n", "Recipe.lr_schedule"),
        ("Distributed.strategy = 'ddp'\n", "'replicate'"),
    ],
)
def test_an_old_name_in_a_recipe_or_a_binding_names_the_new_one(tmp_path, text, new):
    import meltr.train.configurables  # noqa: F401  (Recipe and Distributed are registered)

    recipe = tmp_path / "old.gin"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=f"old.gin.*was renamed {new}"):
        parse_gin([str(recipe)], [])
    with pytest.raises(ConfigError, match=f"bad gin binding.*was renamed {new}"):
        parse_gin([], [text.strip()])
    gin.clear_config()


def test_an_old_name_in_an_included_file_names_the_new_one(tmp_path):
    import meltr.train.configurables  # noqa: F401

    (tmp_path / "old.gin").write_text("Recipe.schedule = @constant_schedule\n")
    recipe = tmp_path / "recipe.gin"
    recipe.write_text(f"include '{tmp_path / 'old.gin'}'\n")
    with pytest.raises(ConfigError, match="Recipe.schedule was renamed Recipe.lr_schedule"):
        parse_gin([str(recipe)], [])
    gin.clear_config()


def test_a_saved_config_with_old_names_is_read_with_a_note(tmp_path, capsys):
    import meltr.train.configurables  # noqa: F401

    config = tmp_path / "config.gin"
    config.write_text("Recipe.schedule = @constant_schedule\nDistributed.strategy = 'ddp'\n")
    parse_gin([str(config)], [], saved=True)
    assert gin.query_parameter("Recipe.lr_schedule").selector.endswith("constant_schedule")
    assert gin.query_parameter("Distributed.strategy") == "replicate"
    assert "read as the new names (Recipe.schedule was renamed" in capsys.readouterr().err
    gin.clear_config()


@pytest.mark.parametrize(
    ("extra", "new"),
    [
        (["--gin_param", "Recipe.schedule = @constant_schedule"], "Recipe.lr_schedule"),
        (["--Distributed.strategy=ddp"], "'replicate'"),
    ],
)
def test_the_command_exits_2_naming_the_new_name(tiny_args, tmp_path, capsys, extra, new):
    run = tmp_path / "run"
    assert main(tiny_args(run) + extra) == 2
    assert f"was renamed {new}" in capsys.readouterr().err
    assert not run.exists()


def test_a_run_saved_with_the_old_names_resumes(tiny_args, tmp_path, capsys):
    """A run whose config.gin predates the rename continues (to a longer, constant schedule)
    exactly as the same run with the new names in its config.gin does, and the changed
    schedule is compared under its new name."""
    new = tmp_path / "new"
    assert main(tiny_args(new)) == 0
    old = tmp_path / "old"
    shutil.copytree(new, old)
    config = (new / "config.gin").read_text()
    assert "Recipe.lr_schedule = " in config
    (old / "config.gin").write_text(config.replace("Recipe.lr_schedule", "Recipe.schedule"))
    last = {}
    for run in (old, new):
        capsys.readouterr()
        changes = ["--train.steps=8", "--Recipe.lr_schedule=@constant_schedule"]
        assert main(["--output", str(run), "--resume", *changes]) == 0
        out, err = capsys.readouterr()
        assert ("Recipe.schedule was renamed Recipe.lr_schedule" in err) == (run == old)
        assert "Recipe.lr_schedule '@warmup_linear_schedule' -> '@constant_schedule'" in out
        assert "Recipe.lr_schedule = " in (run / "config.gin").read_text()
        last[run] = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert last[old]["step"] == last[new]["step"] == 8
    for key, weight in last[new]["model"].items():
        assert torch.equal(last[old]["model"][key], weight), key
