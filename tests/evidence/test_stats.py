"""The comparison's statistics against independent computations: the t statistic by its formula
and its p by integrating Student's density, the Wilcoxon p by enumerating every sign
assignment, and the BCa interval from Efron's formulas on the exact bootstrap distribution."""

import itertools
import math
from statistics import NormalDist

import numpy as np
import pytest

from meltr.evidence.results import RunResult, markdown_table
from meltr.evidence.stats import (
    CONFIDENCE,
    bootstrap_mean_ci,
    paired_comparison,
    summarize,
    wilcoxon_p,
)


def t_density(x, df):
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))


def two_sided_tail_by_integration(t, df):
    """2 * integral_|t|^inf of the t density, by the trapezoid rule after x = |t| / u."""
    u = np.linspace(1e-9, 1.0, 400_001)
    integrand = t_density(abs(t) / u, df) * abs(t) / u**2
    return 2 * np.trapezoid(integrand, u)


@pytest.mark.parametrize(
    "a, b",
    [
        ([31.2, 35.9, 33.0, 30.1], [32.0, 33.6, 29.5, 30.0]),
        ([0.5, 2.0], [0.0, 0.1]),
        ([51.6, 48.4, 58.6, 50.0, 49.2, 53.1], [48.4, 44.5, 50.8, 50.0, 47.7, 49.2]),
    ],
)
def test_summary_and_t_test_follow_their_formulas(a, b):
    s = summarize(a)
    assert (s.n, s.min, s.max) == (len(a), min(a), max(a))
    assert s.mean == pytest.approx(np.mean(a)) and s.std == pytest.approx(np.std(a, ddof=1))
    result = paired_comparison(a, b)
    d = np.subtract(a, b)
    standard_error = d.std(ddof=1) / math.sqrt(len(d))
    assert result.mean_difference == pytest.approx(d.mean())
    assert result.standard_error == pytest.approx(standard_error)
    assert result.t == pytest.approx(d.mean() / standard_error)
    assert result.p == pytest.approx(two_sided_tail_by_integration(result.t, len(d) - 1), abs=2e-6)


def exact_wilcoxon_p(differences):
    """Two-sided exact p: drop zeros, rank |d| (ties get their mean rank), and count the sign
    assignments (all 2^n equally likely under the null) whose positive-rank sum is as far from
    its mean n(n+1)/4 as the observed one."""
    d = [x for x in differences if x != 0]
    magnitudes = sorted(abs(x) for x in d)
    rank = {m: np.mean([i + 1 for i, v in enumerate(magnitudes) if v == m]) for m in magnitudes}
    ranks = [rank[abs(x)] for x in d]
    centre = sum(ranks) / 2
    observed = abs(sum(r for r, x in zip(ranks, d, strict=True) if x > 0) - centre)
    sums = [
        sum(r for r, sign in zip(ranks, signs, strict=True) if sign)
        for signs in itertools.product([False, True], repeat=len(d))
    ]
    return sum(abs(s - centre) >= observed - 1e-9 for s in sums) / len(sums)


@pytest.mark.parametrize(
    "differences",
    [
        [1.5, 2.3, -0.7, 3.1, 0.8],  # distinct
        [1.6, 1.6, -0.8, 3.1, 0.8, 2.4],  # ties
        [0.0, 1.6, -0.8, 3.1, 0.0, -2.4, 0.8],  # zeros and ties
        [2.0, 2.0, 2.0],  # one sign: the smallest p of 3 seeds, 2/8
    ],
)
def test_wilcoxon_p_is_the_exact_sign_flip_probability(differences):
    assert wilcoxon_p(differences) == pytest.approx(exact_wilcoxon_p(differences), abs=1e-12)


def exact_bca_interval(x, confidence):
    """Efron & Tibshirani (1993, 14.3): the BCa interval of the mean from the exact bootstrap
    distribution (all n^n equally likely resamples), z0 from the share of resample means below
    the sample mean (ties counted half), the acceleration from the jackknife means."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    means = np.array([x[list(i)].mean() for i in itertools.product(range(n), repeat=n)])
    theta = x.mean()
    below = ((means < theta).sum() + (means <= theta).sum()) / (2 * len(means))
    normal = NormalDist()
    z0 = normal.inv_cdf(below)
    jackknife = np.array([np.delete(x, i).mean() for i in range(n)])
    u = jackknife.mean() - jackknife
    acceleration = (u**3).sum() / (6 * ((u**2).sum()) ** 1.5)
    bounds = []
    for z in (normal.inv_cdf((1 - confidence) / 2), normal.inv_cdf((1 + confidence) / 2)):
        level = normal.cdf(z0 + (z0 + z) / (1 - acceleration * (z0 + z)))
        bounds.append(np.percentile(means, 100 * level))
    return bounds


def test_bootstrap_interval_is_the_bca_interval_of_the_exact_bootstrap_distribution():
    # Skewed: the plain percentile interval of these is about [0.3, 3.8]; BCa's is [0.4, 4.9].
    gains = [0.0, 0.4, 0.8, 1.2, 6.0]
    low, high = bootstrap_mean_ci(gains)
    expected_low, expected_high = exact_bca_interval(gains, CONFIDENCE)
    assert low == pytest.approx(expected_low, abs=0.1)
    assert high == pytest.approx(expected_high, abs=0.1)
    assert bootstrap_mean_ci(gains) == (low, high)  # a fixed seed: the same table every time


def test_paired_comparison_carries_the_wilcoxon_p_and_the_interval():
    a, b = [51.6, 48.4, 58.6, 50.0, 49.2], [48.4, 44.5, 50.8, 50.0, 47.7]
    result = paired_comparison(a, b)
    d = np.subtract(a, b)
    assert result.wilcoxon_p == pytest.approx(exact_wilcoxon_p(d), abs=1e-12)
    assert (result.ci_low, result.ci_high) == bootstrap_mean_ci(d)
    assert result.ci_low < d.mean() < result.ci_high


def test_degenerate_pairs():
    one = paired_comparison([1.0], [0.0])
    assert one.mean_difference == 1.0
    assert all(math.isnan(v) for v in (one.p, one.wilcoxon_p, one.ci_low, one.ci_high))
    same_gain = paired_comparison([1.0, 2.0], [0.0, 1.0])  # the same gain on every seed
    assert (same_gain.t, same_gain.p) == (math.inf, 0.0)
    assert (same_gain.ci_low, same_gain.ci_high) == (1.0, 1.0)
    assert same_gain.wilcoxon_p == exact_wilcoxon_p([1.0, 1.0]) == 0.5
    equal = paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (equal.t, equal.p, equal.wilcoxon_p) == (0.0, 1.0, 1.0)
    assert (equal.ci_low, equal.ci_high) == (0.0, 0.0)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_comparison([1.0, 2.0], [1.0])


def test_a_metric_of_unknown_direction_is_called_higher_or_lower_not_better_or_worse():
    """results.md's tables of the other test metrics (MedR: lower is better) must not inherit the
    selection metric's direction: a method with the smaller MedR on every seed is "lower"."""
    medr = {"multi-task": [2.0, 2.5, 3.0], "meltr": [1.0, 1.0, 1.5]}
    results = [
        RunResult(method, seed, "val/t2v_R@1", True, {"best/test/t2v_MedR": value})
        for method, values in medr.items()
        for seed, value in enumerate(values)
    ]
    unknown = markdown_table(results, "best/test/t2v_MedR", "multi-task")
    assert "lower than multi-task" in unknown and "worse" not in unknown
    known = markdown_table(results, "best/test/t2v_MedR", "multi-task", higher_is_better=False)
    assert "better than multi-task" in known
