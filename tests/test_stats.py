"""Student's t quantiles and the confidence interval of a mean over seeds."""

from __future__ import annotations

import math

import pytest

from curriculum.report.stats import mean_interval, t_cdf, t_quantile


@pytest.mark.parametrize(
    "df, expected",  # two-sided 95% critical values from standard tables
    [(1, 12.7062047), (2, 4.3026527), (3, 3.1824463), (4, 2.7764451), (9, 2.2621572), (30, 2.0422725), (1000, 1.9623391)],
)
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)


def test_t_cdf_is_symmetric_and_a_cauchy_at_one_df():
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(-1.3, 7) == pytest.approx(1 - t_cdf(1.3, 7))
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi


def test_mean_interval_of_known_values():
    mean, std, low, high = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and std == pytest.approx(math.sqrt(2.5))
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)
    assert (low, high) == (pytest.approx(3.0 - half, abs=1e-6), pytest.approx(3.0 + half, abs=1e-6))
    one = mean_interval([0.7])
    assert one[0] == 0.7 and all(math.isnan(x) for x in one[1:])
    with pytest.raises(ValueError):
        mean_interval([])
