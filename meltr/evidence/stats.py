"""Summary statistics over seeds and the paired t-test used to compare two methods."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


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
class PairedTest:
    """A paired t-test of ``a - b`` over ``n`` common seeds: the mean difference, its standard
    error, the t statistic and the two-sided p value (``nan`` when ``n < 2``; 0 or 1 when the
    differences are all equal)."""

    n: int
    mean_difference: float
    standard_error: float
    t: float
    p: float


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test of ``mean(a - b) = 0``; ``a[i]`` and ``b[i]`` share a seed."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_t_test needs two equal, non-empty lists, got {len(a)}, {len(b)}")
    differences = summarize([x - y for x, y in zip(a, b, strict=True)])
    n = differences.n
    if n < 2:
        return PairedTest(n, differences.mean, math.nan, math.nan, math.nan)
    standard_error = differences.std / math.sqrt(n)
    if standard_error == 0:
        t = 0.0 if differences.mean == 0 else math.copysign(math.inf, differences.mean)
        return PairedTest(n, differences.mean, 0.0, t, 1.0 if differences.mean == 0 else 0.0)
    t = differences.mean / standard_error
    return PairedTest(n, differences.mean, standard_error, t, student_t_two_sided_p(t, n - 1))


def student_t_two_sided_p(t: float, df: int) -> float:
    """``P(|T| >= |t|)`` for Student's t with ``df`` degrees of freedom:
    ``I_x(df / 2, 1 / 2)`` with ``x = df / (df + t²)`` (the regularized incomplete beta)."""
    return regularized_incomplete_beta(df / (df + t * t), df / 2, 0.5)


def regularized_incomplete_beta(x: float, a: float, b: float) -> float:
    """``I_x(a, b)`` for ``0 <= x <= 1``, ``a, b > 0``, by its continued fraction (modified
    Lentz), using the symmetry ``I_x(a, b) = 1 - I_{1-x}(b, a)`` where it converges faster."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    if x > (a + 1) / (a + b + 2):
        return 1.0 - regularized_incomplete_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a) - _log_beta(a, b)
    return math.exp(log_front) * _beta_continued_fraction(x, a, b)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """``1 / (1 + d_1 / (1 + d_2 / (1 + ...)))`` with the incomplete beta's coefficients ``d_j``,
    evaluated by the modified Lentz method for ``b_0 + a_1 / (b_1 + a_2 / (b_2 + ...))`` with
    ``b_0 = 0``, ``b_j = 1``, ``a_1 = 1``, ``a_{j+1} = d_j``."""
    tiny = 1e-300
    result = numerator_term = tiny
    denominator_term = 0.0
    for m in range(500):
        terms = ((1.0,) if m == 0 else ()) + _coefficients(m, x, a, b)
        for coefficient in terms:
            denominator_term = 1.0 + coefficient * denominator_term
            denominator_term = 1.0 / (denominator_term if abs(denominator_term) > tiny else tiny)
            numerator_term = 1.0 + coefficient / numerator_term
            numerator_term = numerator_term if abs(numerator_term) > tiny else tiny
            result *= numerator_term * denominator_term
        if abs(numerator_term * denominator_term - 1.0) < 1e-15:
            return result
    raise ArithmeticError(f"incomplete beta continued fraction did not converge at x={x}")


def _coefficients(m: int, x: float, a: float, b: float) -> tuple[float, ...]:
    """``d_{2m+1}`` (and ``d_{2m}`` before it for ``m >= 1``) of the continued fraction."""
    odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
    if m == 0:
        return (odd,)
    even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
    return (even, odd)
