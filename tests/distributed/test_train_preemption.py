"""tools/train.py stopped by a preemption signal and resumed reaches the uninterrupted weights, in
one process and in two (FSDP) processes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from dist_cli_worker import cli_worker, killed_while_saving_worker
from torch.multiprocessing import ProcessExitedException

import meltr
from meltr.data.synthetic.video_captions import ensure_synthetic_dataset
from meltr.train.cli import main
from meltr.train.distributed import spawn_local_ranks
from meltr.train.evaluate_cli import main as evaluate_main
from meltr.train.run_log import read_metrics
from meltr.train.sharded import latest_sharded

REPO = Path(__file__).resolve().parents[2]
STEPS, STOP_AT = 6, 3


@pytest.fixture(scope="module")
def tiny_args(tmp_path_factory):
    """``tiny_args(output)``: the quickstart recipe shrunk to seconds on a tiny synthetic set."""
    data = ensure_synthetic_dataset(
        tmp_path_factory.mktemp("synthetic"),
        num_train=32,
        num_test=16,
        num_frames=4,
        size=16,
        samples_per_shard=8,
    )
    shrink = {
        "DATA_DIR": data["root"],
        "VOCAB": data["vocab"],
        "NUM_FRAMES": 2,
        "IMAGE_SIZE": 16,
        "RESIZE": 16,
        "MAX_TEXT_LEN": 20,
        "AllInOne.width": 32,
        "AllInOne.depth": 1,
        "AllInOne.heads": 2,
        "AllInOne.mlp_ratio": 1.0,
        "AllInOne.proj_dim": 16,
        "MetaLossTransformer.dim": 8,
        "MetaLossTransformer.heads": 2,
        "MetaLossTransformer.ff_dim": 8,
        "MetaLossTransformer.scale_hidden": 8,
        "MetaLearner.meta_every": 2,
        "MetaLearner.replay": 3,
        "train_loader.num_workers": 0,
        "eval_loader.num_workers": 0,
        "train.batch_size": 8,
        "train.steps": STEPS,
        "train.eval_every": STEPS,
        "train.checkpoint_every": STEPS,
        "train.log_every": 1,
    }

    def args(output: Path, strategy: str = "none") -> list[str]:
        bindings = [f"--{name}={value}" for name, value in shrink.items()]
        strategy_binding = ["--gin_param", f"Distributed.strategy = '{strategy}'"]
        return [
            "--gin",
            "gin/quickstart.gin",
            "--output",
            str(output),
            *bindings,
            *strategy_binding,
        ]

    return args


@pytest.fixture(autouse=True)
def quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def uninterrupted_fsdp(tiny_args, tmp_path_factory):
    """The run on two FSDP ranks, never interrupted (shared by the tests that resume one)."""
    run = tmp_path_factory.mktemp("fsdp") / "uninterrupted"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        patch.chdir(REPO)
        spawn_local_ranks(cli_worker, 2, tiny_args(run, "fsdp"), None, None)
    return run


def export_last(run: Path, output: Path, with_learner: bool) -> Path:
    spec = importlib.util.spec_from_file_location("export", REPO / "tools" / "export_checkpoint.py")
    export = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export)
    export.export_checkpoint(run / "checkpoints" / "last", output, with_learner=with_learner)
    return output


def training_losses(run: Path) -> list[tuple[int, float, float]]:
    """(step, itc, mlm) of every logged training step, in order."""
    return [
        (record["step"], record["loss/itc"], record["loss/mlm"])
        for record in read_metrics(run)
        if "loss/itc" in record
    ]


def test_sigterm_stops_one_process_at_a_step_boundary_and_resume_matches(tiny_args, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    assert main(tiny_args(uninterrupted)) == 0

    original_step = meltr.MetaLearner.step

    def step_with_sigterm(self, batch):
        if self.step_count + 1 == STOP_AT:
            signal.raise_signal(signal.SIGTERM)
        return original_step(self, batch)

    interrupted = tmp_path / "interrupted"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(meltr.MetaLearner, "step", step_with_sigterm)
        assert main(tiny_args(interrupted)) == 0
    stopped = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=False)
    assert stopped["step"] == STOP_AT
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was removed

    assert main(["--output", str(interrupted), "--resume"]) == 0
    expected = torch.load(uninterrupted / "checkpoints" / "last.pt", weights_only=False)
    resumed = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=False)
    assert resumed["step"] == STEPS
    for name, weight in expected["model"].items():
        assert torch.equal(resumed["model"][name], weight), name


def test_sigusr1_on_one_rank_stops_both_and_resume_matches(tiny_args, tmp_path, uninterrupted_fsdp):
    uninterrupted = uninterrupted_fsdp
    interrupted = tmp_path / "interrupted"
    spawn_local_ranks(cli_worker, 2, tiny_args(interrupted, "fsdp"), 1, STOP_AT)
    checkpoint = latest_sharded(interrupted / "checkpoints" / "last")
    assert checkpoint is not None and checkpoint.name == f"step-{STOP_AT:08d}"

    one_process, plain = tmp_path / "one_process", tmp_path / "plain"
    shutil.copytree(interrupted, one_process)
    shutil.copytree(interrupted, plain)

    spawn_local_ranks(cli_worker, 2, ["--output", str(interrupted), "--resume"], None, None)
    expected = torch.load(export_last(uninterrupted, tmp_path / "a.pt", True), weights_only=True)
    resumed = torch.load(export_last(interrupted, tmp_path / "b.pt", True), weights_only=True)
    assert resumed["learner"]["progress"]["step"] == STEPS
    assert training_losses(interrupted) == training_losses(uninterrupted)
    for name, weight in expected["model"].items():
        torch.testing.assert_close(resumed["model"][name], weight, rtol=0, atol=0, msg=name)
    for name, weight in expected["learner"]["learner"]["meta_loss"].items():
        assert torch.equal(resumed["learner"]["learner"]["meta_loss"][name], weight), name

    # The two ranks' evaluation covered the whole test split once: one process evaluating the
    # exported weights gets the same metrics.
    weights = export_last(uninterrupted, tmp_path / "weights.pt", with_learner=False)
    config = str(uninterrupted / "config.gin")
    assert evaluate_main(["--gin", config, "--checkpoint", str(weights), "--views", "1"]) == 0
    single_process = json.loads((tmp_path / "weights.test-1views.json").read_text())
    (two_ranks,) = [r for r in read_metrics(uninterrupted) if "test/t2v_R@1" in r]
    assert {key: two_ranks[key] for key in single_process} == pytest.approx(single_process)

    # The same checkpoint also resumes in one process (a one-process FSDP group): the two ranks'
    # replay batches are joined and the run finishes.
    assert main(["--output", str(one_process), "--resume"]) == 0
    finished = torch.load(export_last(one_process, tmp_path / "c.pt", True), weights_only=True)
    assert finished["learner"]["progress"]["step"] == STEPS
    assert finished["learner"]["learner"]["step_count"] == STEPS

    # ... and in one plain process (no process group, single-file checkpoints from then on).
    strategy = ["--gin_param", "Distributed.strategy = 'none'"]
    assert main(["--output", str(plain), "--resume", *strategy]) == 0
    last = torch.load(plain / "checkpoints" / "last.pt", weights_only=True)
    assert last["step"] == STEPS and last["learner"]["step_count"] == STEPS
    for name, weight in expected["model"].items():  # the same run, batch order aside
        torch.testing.assert_close(last["model"][name], weight, rtol=0.05, atol=0.05, msg=name)


def test_ranks_killed_while_saving_leave_the_previous_checkpoint_and_resume_matches(
    tiny_args, tmp_path, uninterrupted_fsdp
):
    run = tmp_path / "killed"
    args = tiny_args(run, "fsdp") + ["--train.checkpoint_every=2"]
    with pytest.raises(ProcessExitedException, match="SIGKILL"):
        spawn_local_ranks(killed_while_saving_worker, 2, args, 4)
    checkpoints = run / "checkpoints" / "last"
    assert (checkpoints / ".step-00000004.tmp" / "rank-00000.pt").exists()  # the torn save
    assert latest_sharded(checkpoints).name == "step-00000002"

    spawn_local_ranks(cli_worker, 2, ["--output", str(run), "--resume"], None, None)
    assert not list(checkpoints.glob(".step-*.tmp"))
    assert sorted(p.name for p in checkpoints.glob("step-*")) == [
        "step-00000004",
        f"step-{STEPS:08d}",
    ]
    expected = torch.load(
        export_last(uninterrupted_fsdp, tmp_path / "a.pt", True), weights_only=True
    )
    resumed = torch.load(export_last(run, tmp_path / "b.pt", True), weights_only=True)
    assert training_losses(run) == training_losses(uninterrupted_fsdp)
    for name, weight in expected["model"].items():
        torch.testing.assert_close(resumed["model"][name], weight, rtol=0, atol=0, msg=name)
    for name, weight in expected["learner"]["learner"]["meta_loss"].items():
        assert torch.equal(resumed["learner"]["learner"]["meta_loss"][name], weight), name


def test_distributed_run_refuses_double_backward_through_the_backbone(tiny_args, tmp_path, capsys):
    args = tiny_args(tmp_path / "run", "fsdp") + ["--MetaLearner.products='autograd'"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "Distributed.strategy='fsdp' cannot run products='autograd'" in error
    assert "Use products='finite_difference' with solver Identity" in error


def test_distributed_run_refuses_gradient_aggregation(tiny_args, tmp_path, capsys):
    args = tiny_args(tmp_path / "run", "replicate") + ["--gin", "gin/baselines/pcgrad.gin"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "Distributed.strategy='replicate' cannot run MetaLearner.aggregate" in error
    assert not (tmp_path / "run").exists()
