"""The tiny synthetic dataset and the quickstart command line shrunk to seconds, shared by the
tests that train (``tests/train``, ``tests/evidence``, ``tests/benchmarks``). Their conftest files
import the fixtures ``tiny_dataset``, ``no_network_wandb`` and ``tiny_args`` from here. For the
backbones' recipe tests: the loop and meta-network settings that shrink a quick recipe to
seconds, the ``recipe_environment`` fixture, and ``cli_worker``, the training command on one
spawned rank (the two-rank runs)."""

from pathlib import Path

import pytest

from meltr.data.synthetic.video_captions import ensure_synthetic_dataset
from meltr.train.cli import main

REPO = Path(__file__).resolve().parents[1]
# A quick recipe's loop shrunk: 4 steps at batch 4, a MELTR step every second update, in-process
# data loading; and a meta network of width 8.
LOOP_SHRINK = {
    "MetaLearner.meta_every": 2,
    "MetaLearner.replay": 3,
    "train_loader.num_workers": 0,
    "eval_loader.num_workers": 0,
    "train.batch_size": 4,
    "train.steps": 4,
    "train.eval_every": 4,
    "train.checkpoint_every": 2,
    "train.log_every": 1,
}
META_SHRINK = {
    "MetaLossTransformer.dim": 8,
    "MetaLossTransformer.heads": 2,
    "MetaLossTransformer.ff_dim": 8,
    "MetaLossTransformer.scale_hidden": 8,
}


def make_tiny_dataset(directory) -> dict:
    """32 train clips (one shard) and 16 test clips of 4 frames, 16 px, in ``directory``."""
    return ensure_synthetic_dataset(
        directory, num_train=32, num_test=16, num_frames=4, size=16, samples_per_shard=32
    )


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """32 train clips (one shard) and 16 test clips of 4 frames, 16 px."""
    return make_tiny_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(autouse=True)
def no_network_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def tiny_args(tiny_dataset):
    """``tiny_args(output, data_dir=None)``: the quickstart command line shrunk to seconds (in
    the W&B sweep-agent argument style), on the tiny dataset unless ``data_dir`` is given."""

    def args(output, data_dir=None) -> list[str]:
        return tiny_quickstart_args(data_dir or tiny_dataset["root"], tiny_dataset["vocab"], output)

    return args


def tiny_quickstart_args(data_dir: str, vocab: str, output) -> list[str]:
    """The quickstart recipe at tiny sizes on ``data_dir`` (sweep-agent argument style)."""
    return [
        "--gin",
        "gin/quickstart.gin",
        f"--DATA_DIR={data_dir}",
        f"--VOCAB={vocab}",
        "--output",
        str(output),
        "--NUM_FRAMES=2",
        "--IMAGE_SIZE=16",
        "--RESIZE=16",
        "--MAX_TEXT_LEN=20",
        "--AllInOne.width=32",
        "--AllInOne.depth=1",
        "--AllInOne.heads=2",
        "--AllInOne.mlp_ratio=1.0",
        "--AllInOne.proj_dim=16",
        "--MetaLossTransformer.dim=8",
        "--MetaLossTransformer.heads=2",
        "--MetaLossTransformer.ff_dim=8",
        "--MetaLossTransformer.scale_hidden=8",
        "--MetaLearner.meta_every=2",
        "--MetaLearner.replay=3",
        "--train_loader.num_workers=0",
        "--eval_loader.num_workers=0",
        "--train.batch_size=8",
        "--train.steps=6",
        "--train.eval_every=3",
        "--train.checkpoint_every=3",
        "--train.log_every=2",
    ]


@pytest.fixture
def recipe_environment(monkeypatch, tmp_path):
    """No W&B network, a private dataset cache, the repository as working directory (the recipes'
    relative paths)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MELTR_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(REPO)


def cli_worker(args: list[str]) -> None:
    """``tools/train.py args`` on this rank."""
    if main(args) != 0:
        raise RuntimeError(f"tools/train.py {' '.join(args)} failed")
