"""tools/hessian_spectrum.py (meltr.benchmarks.hessian_spectrum): the power iteration against
numpy's eigenvalues, and the command on a tiny quickstart recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meltr.benchmarks import hessian_spectrum as spectrum


@pytest.mark.parametrize("eigenvalues", [[-30.0, -1.0, 0.5, 4.0, 12.0], [50.0, 3.0, -2.0, -7.0]])
def test_extreme_eigenvalues_of_a_symmetric_matrix(eigenvalues):
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    matrix = torch.tensor(basis @ np.diag(eigenvalues) @ basis.T)
    split = len(eigenvalues) // 2  # the operator acts on two tensors, as on a model's parameters
    like = [
        torch.zeros(split, dtype=torch.float64),
        torch.zeros(len(eigenvalues) - split, dtype=torch.float64),
    ]

    def hvp(x):
        y = matrix @ torch.cat(x)
        return [y[:split], y[split:]]

    dominant, other = spectrum.extreme_eigenvalues(hvp, like, iterations=400)
    computed = np.linalg.eigvalsh(matrix.numpy())
    by_magnitude = computed[np.argsort(np.abs(computed))]
    assert dominant == pytest.approx(by_magnitude[-1], rel=1e-6)
    farthest = computed[np.argmax(np.abs(computed - by_magnitude[-1]))]
    assert other == pytest.approx(farthest, rel=1e-6)


def test_the_command_prints_the_spectrum_of_a_recipe_at_its_start(tiny_args, capsys):
    args = tiny_args("unused")
    at = args.index("--output")
    assert spectrum.main([*args[:at], *args[at + 2 :], "--batches", "2", "--iterations", "3"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("batch ")]
    assert [line.split(":")[0] for line in lines] == ["batch 0", "batch 1"]
    for line in lines:
        numbers = [float(word.rstrip(",")) for word in line.split()[4::3]]
        assert len(numbers) == 2 and all(np.isfinite(numbers))
