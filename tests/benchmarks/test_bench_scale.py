"""tools/bench_scale.py (meltr.benchmarks.scale): its release recipe, memory peak and table
arithmetic."""

from __future__ import annotations

import pytest
import torch

import meltr
from meltr.benchmarks import scale as bench
from meltr.benchmarks.common import relative_error
from meltr.benchmarks.scale_rows import make_learner, release_hypergradient
from meltr.benchmarks.transformer import TransformerSize
from meltr.benchmarks.workloads import transformer_builder
from meltr.objective import math_attention
from meltr.solvers import Identity

TINY = TransformerSize(16, 2, 2, 6, 3, 11)


def _tiny_workload():
    torch.manual_seed(0)
    build = transformer_builder(TINY, "tiny")
    workload = build(None, torch.device("cpu"))
    workload.model.double()
    return workload


def test_release_recipe_is_the_learner_hypergradient_without_direct_term():
    """The release's MELTRgrad (written in the tool) and meltr's exact products with
    ``direct_grad=False`` compute the same quantity."""
    workload = _tiny_workload()
    meta = meltr.MetaLossTransformer(3, dim=16, heads=4, ff_dim=16, scale_hidden=8).double()
    with torch.no_grad():
        for p in meta.parameters():
            p.add_(0.3 * torch.randn_like(p))
    primary, aux = workload.make_batch(0), workload.make_batch(1)
    learner = make_learner(workload, meta, Identity(), "autograd")
    learner.direct_grad = False
    expected = learner.hypergradient(primary, aux)
    with math_attention():
        actual = release_hypergradient(workload, meta, primary, aux)
    assert relative_error(actual, expected) < 1e-10


def test_cpu_peak_counts_what_is_alive_at_once():
    setup = bench.Setup(torch.device("cpu"), bf16=False, sdpa="default")

    def allocate():
        a = torch.ones(2**20)  # 4 MiB
        b = torch.ones(2**19)  # 2 MiB, while a is alive
        del a
        c = torch.ones(2**19)  # 2 MiB, after a is freed
        return b, c

    assert bench.peak_mb(setup, allocate) == pytest.approx(6.0, abs=0.1)


def test_cost_table_ratios_and_extra_memory():
    results = {
        "plain": bench.RowResult([2.0, 2.5], 100.0),
        "release": bench.RowResult([8.0], 300.0),
        "central": bench.RowResult([3.0, 3.2, 4.0], 120.0),
        "cg": bench.RowResult([], None, "RuntimeError: no rule"),
    }
    table = bench.cost_table(results, activations=80.0, param_mb=50.0)
    assert table[2] == "| plain training step | 2.00 | 2.25 | 2 | 1.00 | 0.25 | 100 | +0 | +0 |"
    assert table[4] == (
        "| Identity + finite_difference (central) | 3.00 | 3.20 | 3 | 1.50 | 0.38 | 120 | +20 "
        "| +25 |"
    )
    assert "failed: RuntimeError: no rule" in table[5]
    targets = bench.target_lines(results, 80.0, 50.0, torch.device("cpu"))
    assert targets == [
        "Identity + finite_difference (central): 1.50x plain (target <= 1.45), 0.38x release "
        "(target <= 0.40), extra peak +20 MB (target <= 58 MB = 10% of activations + one "
        "parameter copy)"
    ]
