"""tools/analyze.py on a tiny finished MELTR run: the figures exist and their numbers are the
logged ones, or the meta network's, recomputed here independently."""

import json

import gin
import matplotlib.image
import numpy as np
import pytest
import torch
from tiny_recipe import tiny_quickstart_args

import meltr
from meltr.evidence.analysis import PNG, main
from meltr.evidence.attention import has_attention
from meltr.train.cli import main as train_main
from meltr.train.config import parse_gin
from meltr.train.run_log import read_jsonl
from meltr.weighting import FixedWeights

WINDOW = 3


@pytest.fixture(scope="module")
def run(tiny_dataset, tmp_path_factory):
    """A finished 6-step quickstart run, analyzed with ``--window 3``: ``(run_dir, figures)``."""
    run_dir = tmp_path_factory.mktemp("analyze") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        patch.setenv("WANDB_SILENT", "true")
        args = tiny_quickstart_args(tiny_dataset["root"], tiny_dataset["vocab"], run_dir)
        assert train_main(args) == 0
        assert main([str(run_dir), "--window", str(WINDOW), "--points", "201"]) == 0
    figures = json.loads((run_dir / "analysis" / "figures.json").read_text())
    return run_dir, figures


@pytest.fixture(scope="module")
def steps(run):
    records = read_jsonl(run[0] / "analysis" / "steps.jsonl")
    return {key: np.array([r[key] for r in records], dtype=float) for key in records[0]}


def rebuilt_meta_loss(run_dir, step):
    """The MetaLossTransformer of the quickstart with the snapshot's weights, in float64."""
    parse_gin([str(run_dir / "config.gin")], [])
    network = gin.get_configurable("MetaLossTransformer")(num_tasks=2)
    saved = torch.load(run_dir / "analysis" / "meta_loss" / f"step-{step:08d}.pt")
    network.load_state_dict(saved["state_dict"])
    return network.double().eval()


def evaluate(network, losses):
    with torch.no_grad():
        return network(torch.tensor(losses, dtype=torch.float64)).numpy()


def test_every_figure_is_a_decodable_png(run):
    run_dir, figures = run
    assert figures["skipped"] == {}
    assert figures["tasks"] == ["itc", "mlm"]
    for name, file in PNG.items():
        path = run_dir / "analysis" / file
        assert figures["png"][name] == str(path)
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # not a blank canvas


def test_fig4_is_the_logged_dM_dl_and_its_trailing_mean(run, steps):
    _, figures = run
    for task in ("itc", "mlm"):
        series = figures["fig4"][task]
        logged = steps[f"dM/dl/{task}"]
        assert series["step"] == steps["step"].astype(int).tolist()
        assert series["value"] == logged.tolist()
        expected = [logged[max(0, i - WINDOW + 1) : i + 1].mean() for i in range(len(logged))]
        np.testing.assert_allclose(series["moving_average"], expected, rtol=1e-12)
        assert series["window"] == WINDOW


def test_fig6_is_the_range_of_the_logged_losses(run, steps):
    _, figures = run
    for task in ("itc", "mlm"):
        losses = steps[f"loss/{task}"]
        expected = {
            "count": len(losses),
            "mean": losses.mean(),
            "min": losses.min(),
            "q1": np.percentile(losses, 25),
            "median": np.median(losses),
            "q3": np.percentile(losses, 75),
            "max": losses.max(),
            "low": np.percentile(losses, 1),
            "high": np.percentile(losses, 99),
        }
        assert figures["fig6"][task] == pytest.approx(expected, rel=1e-12)


def test_fig3_is_the_meta_network_and_its_gradient(run, steps):
    run_dir, figures = run
    step = figures["snapshot"]["step"]
    assert step == 6  # the newest snapshot
    network = rebuilt_meta_loss(run_dir, step)
    for index, (task, other) in enumerate([("itc", "mlm"), ("mlm", "itc")]):
        curve = figures["fig3"][task]
        x = np.array(curve["x"])
        losses = steps[f"loss/{task}"]
        assert x[0] == pytest.approx(np.percentile(losses, 1), rel=1e-12)
        assert x[-1] == pytest.approx(np.percentile(losses, 99), rel=1e-12)
        held = np.median(steps[f"loss/{other}"])
        assert curve["held"] == {other: pytest.approx(held, rel=1e-12)}
        points = np.full((len(x), 2), held)
        points[:, index] = x
        np.testing.assert_allclose(curve["M"], evaluate(network, points), rtol=1e-10, atol=1e-14)
        m, gradient = np.array(curve["M"]), np.array(curve["dM_dl"])
        central = (m[2:] - m[:-2]) / (x[2:] - x[:-2])
        np.testing.assert_allclose(
            gradient[1:-1], central, rtol=1e-4, atol=1e-6 * np.abs(gradient).max()
        )


def test_fig7_is_the_meta_network_beside_the_sum_on_one_grid(run, steps):
    run_dir, figures = run
    surface = figures["fig7"]
    assert surface["tasks"] == ["itc", "mlm"] and surface["held"] == {}
    x, y = np.array(surface["x"]), np.array(surface["y"])
    assert len(x) == len(y) == 41
    assert x[0] == pytest.approx(np.percentile(steps["loss/itc"], 1), rel=1e-12)
    assert y[-1] == pytest.approx(np.percentile(steps["loss/mlm"], 99), rel=1e-12)
    np.testing.assert_allclose(surface["sum"], x[None, :] + y[:, None], rtol=1e-14)
    grid_x, grid_y = np.meshgrid(x, y)
    points = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    expected = evaluate(rebuilt_meta_loss(run_dir, 6), points).reshape(grid_x.shape)
    np.testing.assert_allclose(surface["M"], expected, rtol=1e-10, atol=1e-14)


def test_fig5_is_the_snapshots_attention_between_losses_at_the_logged_losses(run, steps):
    """Against torch's MultiheadAttention with the snapshot's projection weights, fed the tokens
    (scale embedding of each loss + task embedding) of every logged loss vector."""
    run_dir, figures = run
    network = rebuilt_meta_loss(run_dir, figures["snapshot"]["step"])
    own = network.attention
    dim = own.in_proj.in_features
    reference = torch.nn.MultiheadAttention(dim, own.heads, batch_first=True).double()
    with torch.no_grad():
        reference.in_proj_weight.copy_(own.in_proj.weight)
        reference.in_proj_bias.copy_(own.in_proj.bias)
    losses = torch.tensor(np.stack([steps["loss/itc"], steps["loss/mlm"]], axis=1))
    with torch.no_grad():
        tokens = network.scale_embedding(losses.unsqueeze(-1)) + network.task_embedding.weight
        _, weights = reference(tokens, tokens, tokens, average_attn_weights=False)
    expected = weights.mean(dim=0).numpy()  # [heads, T, T], averaged over the logged steps
    fig5 = figures["fig5"]
    assert fig5["num_loss_vectors"] == len(losses)
    np.testing.assert_allclose(fig5["per_head"], expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(fig5["mean"], expected.mean(axis=0), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.sum(fig5["mean"], axis=1), 1.0, rtol=1e-12)


def test_an_earlier_snapshot_and_the_error_for_a_missing_one(run, capsys):
    run_dir, _ = run
    assert main([str(run_dir), "--snapshot", "3", "--points", "5", "--grid", "3"]) == 0
    figures = json.loads((run_dir / "analysis" / "figures.json").read_text())
    assert figures["snapshot"]["step"] == 3
    network = rebuilt_meta_loss(run_dir, 3)
    curve = figures["fig3"]["mlm"]
    points = np.stack([np.full(5, curve["held"]["itc"]), curve["x"]], axis=1)
    np.testing.assert_allclose(curve["M"], evaluate(network, points), rtol=1e-10, atol=1e-14)
    assert main([str(run_dir), "--snapshot", "4"]) == 2
    error = capsys.readouterr().err
    assert "step-00000004.pt does not exist" in error and "step-00000003.pt" in error


def test_a_directory_without_analysis_files_is_exit_2_naming_the_file(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert f"{tmp_path / 'analysis' / 'steps.jsonl'} does not exist" in capsys.readouterr().err


def test_without_snapshots_only_figures_4_and_6_are_drawn(tmp_path, capsys):
    steps_file = tmp_path / "analysis" / "steps.jsonl"
    steps_file.parent.mkdir()
    records = [
        {"step": 1, "loss/a": 1.0, "loss/b": 2.0, "dM/dl/a": 0.5, "dM/dl/b": None},
        {"step": 2, "loss/a": None, "loss/b": 3.0, "dM/dl/a": 0.7, "dM/dl/b": 0.1},
    ]
    steps_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main([str(tmp_path)]) == 0
    figures = json.loads((tmp_path / "analysis" / "figures.json").read_text())
    assert set(figures["png"]) == {"fig4", "fig6"}
    assert set(figures["skipped"]) == {"fig3", "fig5", "fig7"}
    assert "fig3 skipped: no snapshot in" in capsys.readouterr().out
    assert figures["fig6"]["a"]["count"] == 1 and figures["fig6"]["a"]["max"] == 1.0
    assert figures["fig4"]["b"] == {
        "step": [2],
        "value": [0.1],
        "moving_average": [0.1],
        "window": 1,
    }


def test_fig5_needs_a_meta_network_with_attention():
    assert has_attention(meltr.MetaLossTransformer(2, dim=8, heads=2, ff_dim=8, scale_hidden=4))
    assert not has_attention(meltr.LinearMetaLoss(2))
    assert not has_attention(FixedWeights(2, "sum"))
