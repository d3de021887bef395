"""Summary statistics over seeds and the paired tests that compare two methods (``scipy.stats``).

A comparison pairs two methods' scores seed by seed (same recipe and seed, one method each) and
reports on the per-seed differences ``d = a - b``:

- the paired t-test (``scipy.stats.ttest_rel``), two-sided;
- the Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided, zero differences dropped
  as Wilcoxon did): its p-value needs no normality, and for ``n <= 13`` scipy computes it
  exactly by enumerating the sign assignments, ties and zeros included (normal approximation
  above that);
- a bootstrap confidence interval of the mean difference (``scipy.stats.bootstrap``, BCa,
  ``CONFIDENCE`` level, ``BOOTSTRAP_RESAMPLES`` resamples from a fixed seed, so a table is
  reproducible).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_METHOD = "BCa"
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (``n - 1``; 0 for one value), min and max of ``n`` values."""

    n: int
    mean: float
    std: float
    min: float
    max: float


def summarize(values: Sequence[float]) -> Summary:
    """The ``Summary`` of ``values`` (at least one)."""
    if not values:
        raise ValueError("summarize needs at least one value")
    n, mean = len(values), sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return Summary(n, mean, math.sqrt(variance), min(values), max(values))


@dataclass(frozen=True)
class PairedComparison:
    """``a - b`` over ``n`` common seeds: the mean difference and its standard error; the
    paired t-test's statistic ``t`` and two-sided ``p``; the Wilcoxon signed-rank two-sided
    ``wilcoxon_p``; the bootstrap confidence interval ``[ci_low, ci_high]`` of the mean
    difference. Every test is ``nan`` for ``n < 2``; when the differences are all equal, ``t``
    is 0 or ±inf (``p`` 1 or 0) and the interval is that one value; when they are all zero,
    ``wilcoxon_p`` is 1."""

    n: int
    mean_difference: float
    standard_error: float
    t: float
    p: float
    wilcoxon_p: float
    ci_low: float
    ci_high: float


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> PairedComparison:
    """The ``PairedComparison`` of ``a`` and ``b``; ``a[i]`` and ``b[i]`` share a seed."""
    if len(a) != len(b) or not a:
        raise ValueError(
            f"paired_comparison needs two equal, non-empty lists, got {len(a)}, {len(b)}"
        )
    differences = np.subtract(np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    spread = summarize(differences.tolist())
    n, mean = spread.n, spread.mean
    if n < 2:
        return PairedComparison(n, mean, *[math.nan] * 6)
    standard_error = spread.std / math.sqrt(n)
    t, p = _t_test(differences, standard_error)
    low, high = bootstrap_mean_ci(differences)
    return PairedComparison(n, mean, standard_error, t, p, wilcoxon_p(differences), low, high)


def _t_test(differences: np.ndarray, standard_error: float) -> tuple[float, float]:
    """``scipy.stats.ttest_rel`` on the differences (against zero); where they are all equal
    (no spread) the statistic is 0 or ±inf and p is 1 or 0, which scipy leaves undefined."""
    if standard_error == 0:
        mean = float(differences.mean())
        return (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    result = stats.ttest_rel(differences, np.zeros_like(differences))
    return float(result.statistic), float(result.pvalue)


def wilcoxon_p(differences: Sequence[float]) -> float:
    """Two-sided p of the Wilcoxon signed-rank test that the differences are symmetric about 0
    (zeros dropped): ``nan`` for fewer than 2 differences, 1 when all are zero."""
    differences = np.asarray(differences, dtype=float)
    if differences.size < 2:
        return math.nan
    if not differences.any():
        return 1.0
    return float(stats.wilcoxon(differences, zero_method="wilcox").pvalue)


def bootstrap_mean_ci(differences: Sequence[float]) -> tuple[float, float]:
    """The ``CONFIDENCE`` BCa bootstrap interval of the mean of ``differences`` (at least 2),
    from ``BOOTSTRAP_RESAMPLES`` resamples drawn with the seed ``BOOTSTRAP_SEED``; the value
    itself when all differences are equal (a degenerate bootstrap distribution)."""
    differences = np.asarray(differences, dtype=float)
    if differences.size < 2:
        raise ValueError(f"a bootstrap interval needs at least 2 values, got {differences.size}")
    if np.all(differences == differences[0]):
        return float(differences[0]), float(differences[0])
    with warnings.catch_warnings():
        # A bootstrap distribution with few distinct means makes BCa warn; the interval stands.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        interval = stats.bootstrap(
            (differences,),
            np.mean,
            confidence_level=CONFIDENCE,
            n_resamples=BOOTSTRAP_RESAMPLES,
            method=BOOTSTRAP_METHOD,
            rng=np.random.default_rng(BOOTSTRAP_SEED),
        ).confidence_interval
    return float(interval.low), float(interval.high)
