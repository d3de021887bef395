"""The training command end to end, its configuration errors, corrupt data and exact resume."""

import io
import tarfile
from pathlib import Path

import pytest
import torch

import meltr
from meltr.train.cli import main
from meltr.train.run_log import read_metrics

TASKS = ("itc", "mlm")
RANKS = ("R@1", "R@5", "R@10", "MedR", "MnR")
TEST_METRICS = [f"test/{direction}_{rank}" for direction in ("t2v", "v2t") for rank in RANKS]


def test_tiny_quickstart_end_to_end(tiny_args, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    args = tiny_args(run)

    assert main(args) == 0

    assert (run / "checkpoints" / "last.pt").is_file()
    assert (run / "checkpoints" / "best.pt").is_file()
    assert any((run / "wandb").glob("offline-run-*"))
    config = (run / "config.gin").read_text()
    for binding in ("MetaLearner.meta_every = 2", "AllInOne.width = 32", "train.steps = 6"):
        assert binding in config  # the sweep-style arguments reached gin
    records = read_metrics(run)
    train_records = [r for r in records if "loss/itc" in r]
    eval_records = [r for r in records if "test/t2v_R@1" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6]
    assert [r["step"] for r in eval_records] == [3, 6]
    per_step = {f"loss/{t}" for t in TASKS} | {f"dM/dl/{t}" for t in TASKS}
    per_step |= {"meta_loss", "lr", "data/num_corrupt", "skipped/nonfinite_loss", "time/meta_share"}
    meta_step = {"meta/L_pri", "meta/hypergrad_norm"}
    for record in train_records:
        assert per_step | meta_step <= record.keys()  # every interval of 2 steps holds a meta step
        assert 0 < record["time/meta_share"] < 1
    for record in eval_records:
        assert set(TEST_METRICS) <= record.keys()
        assert 0 <= record["test/t2v_R@1"] <= 100
    out = capsys.readouterr().out
    assert f"run directory: {run}" in out
    assert f'"test/t2v_R@1": {eval_records[-1]["test/t2v_R@1"]}' in out


@pytest.mark.parametrize(
    ("extra", "culprit"),
    [
        (["--gin_param", "NoSuchConfigurable.rate = 1"], "NoSuchConfigurable"),
        (["--MetaLearner.no_such_parameter=1"], "no_such_parameter"),
        (["--MetaLearner.gamma=[0.1,"], "MetaLearner.gamma"),
        (["--gin_param", "AllInOne.vocab_size = 10"], "vocab_size"),
        (["--DATA_DIR=/nonexistent/shards"], "/nonexistent/shards"),
        (["--VOCAB=/nonexistent/vocab.txt"], "/nonexistent/vocab.txt"),
        (["--CHECKPOINT=/nonexistent/model.ckpt"], "/nonexistent/model.ckpt"),
        (["--gin", "gin/no_such_recipe.gin"], "no_such_recipe.gin"),
    ],
)
def test_bad_configuration_exits_2_before_any_work(
    tiny_args, tmp_path, monkeypatch, capsys, extra, culprit
):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was built despite the bad configuration")

    monkeypatch.setattr(meltr.backbones.allinone.AllInOne, "__init__", refuse)
    run = tmp_path / "run"
    args = tiny_args(run) + extra

    assert main(args) == 2
    assert culprit in capsys.readouterr().err
    assert not run.exists()


def test_real_recipe_without_paths_says_how_to_set_them(tmp_path, capsys):
    assert main(["--gin", "gin/allinone_msrvtt_7k.gin", "--output", str(tmp_path / "run")]) == 2
    assert "--gin_param \"DATA_DIR='" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n")
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "train-000000.tar").touch()
    (shards / "test-000000.tar").touch()
    paths = [f"--DATA_DIR={shards}", f"--VOCAB={vocab}", "--output", str(tmp_path / "run")]
    assert main(["--gin", "gin/allinone_msrvtt.gin", *paths]) == 2
    assert "--gin_param \"CHECKPOINT='" in capsys.readouterr().err


def _copy_with_corrupt_video(source: Path, target: Path, corrupt_index: int) -> None:
    """Copy a shard, replacing the mp4 bytes of sample ``corrupt_index`` with garbage."""
    with tarfile.open(source) as reader, tarfile.open(target, "w") as writer:
        videos = 0
        for member in reader.getmembers():
            data = reader.extractfile(member).read()
            if member.name.endswith(".mp4"):
                if videos == corrupt_index:
                    data = b"\x00\x00\x00\x18ftypmp42 not really a video"
                videos += 1
            member.size = len(data)
            writer.addfile(member, io.BytesIO(data))


def test_corrupt_video_is_skipped_and_counted(tiny_dataset, tiny_args, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (train_shard,) = tiny_dataset["train"]
    _copy_with_corrupt_video(Path(train_shard), data / "train-000000.tar", corrupt_index=5)
    for shard in tiny_dataset["test"]:
        (data / Path(shard).name).write_bytes(Path(shard).read_bytes())
    run = tmp_path / "run"

    # 6 steps of 8 clips read more than the 32 clips of the only train shard.
    with pytest.warns(UserWarning, match="corrupt"):
        assert main(tiny_args(run, data_dir=str(data))) == 0

    last = [r for r in read_metrics(run) if "data/num_corrupt" in r][-1]
    assert last["step"] == 6
    assert last["data/num_corrupt"] >= 1


def test_stop_and_resume_reaches_the_same_weights(tiny_args, tmp_path, monkeypatch):
    uninterrupted = tmp_path / "uninterrupted"
    assert main(tiny_args(uninterrupted)) == 0

    interrupted = tmp_path / "interrupted"
    original_step = meltr.MetaLearner.step
    calls = []

    def crash_at_step_5(self, batch):
        calls.append(1)
        if len(calls) == 5:  # after the step-3 checkpoint, mid-way to the next one
            raise KeyboardInterrupt
        return original_step(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(meltr.MetaLearner, "step", crash_at_step_5)
        assert main(tiny_args(interrupted)) == 130  # as Ctrl-C ends it
    assert torch.load(interrupted / "checkpoints" / "last.pt", weights_only=False)["step"] == 3

    assert main(["--output", str(interrupted), "--resume"]) == 0  # config from the run's config.gin

    expected = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=False)
    resumed = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=False)
    assert resumed["step"] == expected["step"] == 6
    assert resumed["batches_consumed"] == expected["batches_consumed"] == 6
    for name, weight in expected["model"].items():
        assert torch.equal(resumed["model"][name], weight), name
    for name, weight in expected["learner"]["meta_loss"].items():
        assert torch.equal(resumed["learner"]["meta_loss"][name], weight), name
    assert resumed["learner"]["step_count"] == expected["learner"]["step_count"]
    # The step-4 record averages steps 3-4 uninterrupted but only step 4 after the resume at 3.
    records = [
        [
            {k: v for k, v in r.items() if not k.startswith(("time/", "meta/seconds"))}
            for r in read_metrics(run)
            if r["step"] != 4
        ]
        for run in (uninterrupted, interrupted)
    ]
    assert records[0] == records[1]
