"""A tiny synthetic dataset and a tiny quickstart command line shared by the training tests."""

import pytest

from meltr.data.synthetic import ensure_synthetic_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """32 train clips (one shard) and 16 test clips of 4 frames, 16 px."""
    return ensure_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"),
        num_train=32,
        num_test=16,
        num_frames=4,
        size=16,
        samples_per_shard=32,
    )


@pytest.fixture(autouse=True)
def no_network_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def tiny_args(tiny_dataset):
    """``tiny_args(output, data_dir=None)``: the quickstart command line shrunk to seconds (in
    the W&B sweep-agent argument style), on the tiny dataset unless ``data_dir`` is given."""

    def args(output, data_dir=None) -> list[str]:
        data_dir = data_dir or tiny_dataset["root"]
        return _tiny_quickstart_args(data_dir, tiny_dataset["vocab"], output)

    return args


def _tiny_quickstart_args(data_dir: str, vocab: str, output) -> list[str]:
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
