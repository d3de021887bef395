"""The comparison's statistics against independent computations (numerical integration, formulas
written here, textbook critical values)."""

import math

import numpy as np
import pytest

from meltr.evidence.stats import (
    paired_t_test,
    regularized_incomplete_beta,
    student_t_two_sided_p,
    summarize,
)


def t_density(x, df):
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))


def two_sided_tail_by_integration(t, df):
    """2 * integral_|t|^inf of the t density, by the trapezoid rule after x = |t| / u."""
    u = np.linspace(1e-9, 1.0, 400_001)
    integrand = t_density(abs(t) / u, df) * abs(t) / u**2
    return 2 * np.trapezoid(integrand, u)


@pytest.mark.parametrize("t, df", [(0.5, 1), (2.0, 2), (1.3, 4), (3.1, 9), (-2.2, 5)])
def test_t_p_value_equals_the_integrated_density(t, df):
    assert student_t_two_sided_p(t, df) == pytest.approx(
        two_sided_tail_by_integration(t, df), abs=2e-6
    )


@pytest.mark.parametrize("t, df", [(12.706, 1), (4.303, 2), (2.776, 4), (2.228, 10)])
def test_textbook_critical_values_give_five_percent(t, df):
    assert student_t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-4)


def test_incomplete_beta_equals_the_binomial_sum_for_integer_arguments():
    # I_x(a, b) = sum_{j=a}^{a+b-1} C(a+b-1, j) x^j (1-x)^(a+b-1-j)
    for x, a, b in [(0.3, 2, 3), (0.9, 2, 3), (0.5, 4, 1), (0.05, 1, 7)]:
        n = a + b - 1
        expected = sum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(a, n + 1))
        assert regularized_incomplete_beta(x, a, b) == pytest.approx(expected, rel=1e-12)


def test_summary_and_paired_test_follow_their_formulas():
    a, b = [31.2, 35.9, 33.0, 30.1], [32.0, 33.6, 29.5, 30.0]
    s = summarize(a)
    assert (s.n, s.min, s.max) == (4, 30.1, 35.9)
    assert s.mean == pytest.approx(np.mean(a)) and s.std == pytest.approx(np.std(a, ddof=1))
    test = paired_t_test(a, b)
    d = np.subtract(a, b)
    t = d.mean() / (d.std(ddof=1) / 2)
    assert test.t == pytest.approx(t) and test.mean_difference == pytest.approx(d.mean())
    assert test.p == pytest.approx(two_sided_tail_by_integration(t, 3), abs=2e-6)


def test_degenerate_pairs():
    assert math.isnan(paired_t_test([1.0], [0.0]).p)
    assert paired_t_test([1.0, 2.0], [0.0, 1.0]).p == 0.0  # the same gain on every seed
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]).p == 1.0
