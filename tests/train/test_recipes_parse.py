"""Every shipped gin file parses: its includes exist and every configurable and parameter it
binds is registered (a typo in a recipe fails here, not in a user's run)."""

from pathlib import Path

import pytest

import meltr.train.configurables  # noqa: F401  (the gin registrations)
from meltr.train.config import REPOSITORY_ROOT, parse_gin

GIN_FILES = sorted((REPOSITORY_ROOT / "gin").rglob("*.gin"))


def test_the_recipes_are_found():
    names = {path.relative_to(REPOSITORY_ROOT).as_posix() for path in GIN_FILES}
    assert {"gin/quickstart.gin", "gin/demo/video_downstream.gin", "gin/baselines/mtl.gin"} <= names


@pytest.mark.parametrize(
    "path", GIN_FILES, ids=lambda p: Path(p).relative_to(REPOSITORY_ROOT).as_posix()
)
def test_recipe_parses(path):
    parse_gin([str(path)], [])
