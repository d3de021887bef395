"""The faults a new user hits with tools/train.py and tools/evaluate.py: each gives a named error
(exit 2 before anything is created) or a counted skip, and nothing is lost
(docs/faults.md lists them with these tests)."""

import errno
import json
import random
import tarfile
from pathlib import Path

import pytest
import torch

import meltr
from meltr.train.cli import main
from meltr.train.evaluate_cli import main as evaluate_main
from meltr.train.run_log import read_metrics


def tensors(tree):
    """Every tensor in a nested checkpoint structure."""
    if torch.is_tensor(tree):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from tensors(value)
    elif isinstance(tree, list | tuple):
        for value in tree:
            yield from tensors(value)


def all_finite(path: Path) -> bool:
    checkpoint = torch.load(path, weights_only=True)
    parts = (checkpoint["model"], checkpoint["learner"]["meta_loss"])
    return all(bool(torch.isfinite(t).all()) for part in parts for t in tensors(part))


# ---------------------------------------------------------------- 1. non-finite values


def test_an_exploding_meta_network_never_reaches_the_weights(tiny_args, tmp_path):
    run = tmp_path / "run"
    args = tiny_args(run) + ["--meta/Adam.lr=1e30", "--MetaLearner.meta_every=1"]
    args += ["--train.steps=3", "--train.checkpoint_every=1", "--train.max_consecutive_skips=100"]
    original_step = meltr.MetaLearner.step
    learners = []

    def remember_learner(self, batch):
        learners.append(self)
        return original_step(self, batch)

    with pytest.MonkeyPatch.context() as patch, pytest.warns(UserWarning, match="skipped"):
        patch.setattr(meltr.MetaLearner, "step", remember_learner)
        assert main(args) == 0
    weights = list(learners[-1].model.parameters())
    assert all(bool(torch.isfinite(weight).all()) for weight in weights)
    for checkpoint in (run / "checkpoints").glob("*.pt"):  # only healthy states are saved
        assert all_finite(checkpoint)
    record = [r for r in read_metrics(run) if "loss/itc" in r][-1]
    skipped = sum(value for key, value in record.items() if key.startswith("skipped/"))
    assert skipped >= 1  # the non-finite updates were counted, not applied


def test_a_diverged_run_stops_and_keeps_the_last_good_checkpoint(tiny_args, tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny_args(run) + ["--backbone/AdamW.lr=1e30", "--train.max_consecutive_skips=2"]
    args += ["--train.checkpoint_every=1", "--MetaLearner.meta_every=100"]
    original_step = meltr.MetaLearner.step
    saved = {}

    def remember_last_good(self, batch):
        last = run / "checkpoints" / "last.pt"
        if last.exists():
            saved["bytes"] = last.read_bytes()
        return original_step(self, batch)

    with pytest.MonkeyPatch.context() as patch, pytest.warns(UserWarning, match="skipped"):
        patch.setattr(meltr.MetaLearner, "step", remember_last_good)
        assert main(args) == 1
    error = capsys.readouterr().err
    assert "the run diverged" in error and "max_consecutive_skips" in error
    last = run / "checkpoints" / "last.pt"
    if last.exists():  # saved before the divergence, never after
        assert last.read_bytes() == saved["bytes"] and all_finite(last)


# ---------------------------------------------------------------- 2. an existing run


def test_reusing_an_output_without_resume_is_refused_and_changes_nothing(
    tiny_args, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(tiny_args(run) + ["--train.steps=2"]) == 0
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    assert main(tiny_args(run) + ["--train.steps=2"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


# ---------------------------------------------------------------- 3. bindings with no effect


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        ("--DATA_DIRR=/does/not/exist", "macro DATA_DIRR .* referenced by no gin file .*DATA_DIR"),
        ("--backbon/AdamW.lr=1e-9", "not used by this run.*did you mean backbone/AdamW.lr"),
        ("--LinearMetaLoss.init=2.0", "LinearMetaLoss.init = 2.0' is not used"),
    ],
)
def test_a_binding_the_run_does_not_use_exits_2(tiny_args, tmp_path, capsys, binding, message):
    run = tmp_path / "run"
    assert main(tiny_args(run) + [binding]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback
    assert not run.exists()


def test_unused_recipe_bindings_are_listed_once(tiny_args, tmp_path):
    # The recipe's own MetaLossTransformer.* settings do not apply to the multi-task baseline: a
    # warning (on the command line, as in tiny_args, they would be an error).
    args = [a for a in tiny_args(tmp_path / "run") if not a.startswith("--MetaLossTransformer.")]
    with pytest.warns(UserWarning, match="not used by this run.*MetaLossTransformer.dim"):
        assert main(args + ["--gin", "gin/baselines/mtl.gin"]) == 0


def test_synthetic_dataset_bindings_take_effect(tmp_path, monkeypatch):
    import gin

    import meltr.data.configurables as configurables
    from meltr.train.config import parse_gin

    monkeypatch.setenv("MELTR_CACHE", str(tmp_path))
    sizes = {"num_train": 3, "num_val": 2, "num_test": 1, "num_frames": 2, "size": 16}
    parse_gin([], [f"synthetic_dataset.{name} = {value}" for name, value in sizes.items()])
    root = Path(configurables.synthetic_data_dir())
    manifest = json.loads((root / "manifest.json").read_text())["arguments"]
    assert (manifest["num_train"], manifest["num_val"], manifest["num_frames"]) == (3, 2, 2)
    gin.clear_config()


# ---------------------------------------------------------------- 4. no usable sample


def test_empty_shards_stop_with_their_names(tiny_dataset, tiny_args, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-000000.tar").write_bytes(b"")
    for shard in tiny_dataset["test"]:
        (data / Path(shard).name).write_bytes(Path(shard).read_bytes())
    run = tmp_path / "run"
    with pytest.warns(UserWarning):
        assert main(tiny_args(run, data_dir=str(data))) == 2
    assert "hold no readable sample" in capsys.readouterr().err
    assert not run.exists()


def test_only_corrupt_samples_stop_with_the_reasons(tiny_dataset, tiny_args, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (train_shard,) = tiny_dataset["train"]
    with tarfile.open(train_shard) as reader, tarfile.open(data / "train-000000.tar", "w") as out:
        for member in reader.getmembers():
            if member.name.endswith(".json"):
                out.addfile(member, reader.extractfile(member))  # every mp4 missing
    for shard in tiny_dataset["test"]:
        (data / Path(shard).name).write_bytes(Path(shard).read_bytes())
    args = tiny_args(tmp_path / "run", data_dir=str(data))
    with pytest.warns(UserWarning, match="corrupt"):
        assert main([*args, "--train_loader.max_consecutive_corrupt=40"]) == 2
    error = capsys.readouterr().err
    assert "no usable training sample in the last 40 samples" in error
    assert "no .mp4 member (40)" in error


# ---------------------------------------------------------------- 5. unreadable checkpoints


DAMAGE = {
    "truncate": lambda data: data[:1000],
    "empty": lambda data: b"",
    "random": lambda data: random.Random(0).randbytes(len(data)),  # not a zip, not a pickle
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_falls_back_to_the_newest_valid_checkpoint(
    tiny_args, tmp_path, capsys, caplog, damage
):
    run = tmp_path / "run"
    assert main(tiny_args(run) + ["--train.checkpoint_every=2", "--train.eval_every=6"]) == 0
    last = run / "checkpoints" / "last.pt"
    damaged = DAMAGE[damage](last.read_bytes())
    last.write_bytes(damaged)
    stale = run / "checkpoints" / ".last.pt.dead.tmp"  # left behind by a killed save
    stale.write_bytes(b"partial")
    with (run / "metrics.jsonl").open("a") as file:
        file.write('{"step": 7, "loss/it')  # torn by the same kill
    capsys.readouterr()
    with pytest.warns(UserWarning, match="torn last line"):
        assert main(["--output", str(run), "--resume", "--train.steps=8"]) == 0
    # the valid checkpoint of the highest step: best.pt (step 6; last.prev.pt is at step 4)
    assert f"resuming from {last.with_name('best.pt')} at step 6" in capsys.readouterr().out
    reason = {"truncate": "central directory", "empty": "empty or truncated", "random": "corrupt"}
    assert f"cannot resume from {last}" in caplog.text and reason[damage] in caplog.text
    assert "trust_checkpoint_pickle" not in caplog.text
    # the damaged file was set aside, not rotated into last.prev.pt or deleted
    assert (run / "checkpoints" / "set_aside" / "last.pt.unusable").read_bytes() == damaged
    assert torch.load(last, weights_only=True)["step"] == 8
    assert torch.load(last.with_name("last.prev.pt"), weights_only=True)["step"] == 4
    assert not stale.exists()
    steps = [record["step"] for record in read_metrics(run)]
    assert steps == sorted(steps) and steps.count(6) >= 1 and 7 not in steps


def test_resume_with_no_valid_checkpoint_names_every_file(tiny_args, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run) + ["--train.steps=2"]) == 0
    for path in (run / "checkpoints").glob("*.pt"):
        path.write_bytes(b"")
    assert main(["--output", str(run), "--resume"]) == 2
    error = capsys.readouterr().err
    assert "last.pt" in error and "best.pt" in error and "empty or truncated" in error


# ---------------------------------------------------------------- 6. bad values


@pytest.mark.parametrize(
    ("binding", "culprit"),
    [
        ("--train.steps=abc", "train.steps must be an integer"),
        ("--train.batch_size=0", "train.batch_size must be an integer >= 1"),
        ("--train.log_every=0", "train.log_every must be an integer >= 1"),
        ("--MetaLearner.meta_every=0", "meta_every must be an integer >= 1"),
        ("--MetaLearner.products=foo", "products 'foo'"),
        ("--MetaLearner.gamma=nan", "gamma must be a finite number"),
        ("--MetaLearner.solver=@Neumann", "pass Neumann()"),
    ],
)
def test_bad_values_exit_2_before_any_directory(tiny_args, tmp_path, capsys, binding, culprit):
    run = tmp_path / "run"
    assert main(tiny_args(run) + [binding]) == 2
    assert culprit in capsys.readouterr().err
    assert not run.exists()


def test_a_gpu_device_without_cuda_and_an_output_file_exit_2(tiny_args, tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: False)
        assert main(tiny_args(run) + ["--train.device=cuda"]) == 2
    assert "train.device = 'cuda', but this machine has no CUDA device" in capsys.readouterr().err
    assert not run.exists()
    run.write_text("notes")
    assert main(tiny_args(run)) == 2
    assert f"--output {run} is a file, not a directory" in capsys.readouterr().err
    assert run.read_text() == "notes"


def test_a_full_disk_during_a_save_exits_2_naming_the_intact_checkpoint(
    tiny_args, tmp_path, capsys
):
    run = tmp_path / "run"
    original_save = torch.save

    def save_until_the_disk_is_full(obj, file, *args, **kwargs):
        # the checkpoints of step 3 (best, last) fit, those of step 6 do not (torch's own
        # reporting of a failed write: tests/train/test_checkpoint.py)
        if isinstance(obj, dict) and obj.get("step") == 6:
            file.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original_save(obj, file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", save_until_the_disk_is_full)
        assert main(tiny_args(run)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the run's warnings
    last = run / "checkpoints" / "last.pt"
    assert error.startswith("cannot write: cannot write the last checkpoint of step 6")
    assert "No space left on device" in error and "MiB free there" in error
    assert f"The last checkpoint, {last} (step 3), is intact" in error and "--resume" in error
    assert torch.load(last, weights_only=True)["step"] == 3
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no temp


# ---------------------------------------------------------------- 8. evaluation


def recipe_args(tiny_args, tmp_path) -> list[str]:
    """The tiny recipe without --output (for tools/evaluate.py)."""
    recipe = tiny_args(tmp_path / "run")
    return recipe[: recipe.index("--output")] + recipe[recipe.index("--output") + 2 :]


class Pickled:
    """A Python object a checkpoint may pickle (as Lightning checkpoints do)."""


NOISE = random.Random(0).randbytes(4096)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty or truncated"),
        (NOISE, "it is corrupt or not a checkpoint"),
        (b"\x80\x04" + NOISE, "it is corrupt"),  # a pickle header, then garbage
        ("pickled", "holds Python objects besides tensors"),
    ],
    ids=["empty", "random-bytes", "damaged-pickle", "pickled-object"],
)
def test_evaluating_an_unreadable_checkpoint_names_it_and_why(
    tiny_args, tmp_path, capsys, content, message
):
    checkpoint = tmp_path / "checkpoint.pt"
    if content == "pickled":
        torch.save({"state_dict": {}, "hyper_parameters": Pickled()}, checkpoint)
    else:
        checkpoint.write_bytes(content)
    assert evaluate_main([*recipe_args(tiny_args, tmp_path), "--checkpoint", str(checkpoint)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # one line, after any warning
    assert (
        error.startswith("configuration error:") and f"{checkpoint}" in error and message in error
    )
    # the advice to trust the file is for a file that really holds Python objects
    assert ("trust_checkpoint_pickle" in error) == (content == "pickled")


def test_evaluating_a_checkpoint_of_another_size_names_the_keys(tiny_args, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(tiny_args(run) + ["--train.steps=1"]) == 0
    wider = [
        arg.replace("AllInOne.width=32", "AllInOne.width=64")
        for arg in recipe_args(tiny_args, tmp_path)
    ]
    last = run / "checkpoints" / "last.pt"
    capsys.readouterr()
    assert evaluate_main([*wider, "--checkpoint", str(last)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("configuration error:") and f"{last} does not fit this model" in error
    assert "text_embeddings.word_embeddings.weight (80, 32) vs (80, 64) in the model" in error
