"""Repeated-cycle statistics: mean, sample std, Student t 95 % interval (linear or log scale), CV, t quantile.

The scipy oracle tests check both scales against scipy.stats (scipy is in the [dev] extra).
"""

from __future__ import annotations

import math

import pytest
import scipy.stats as scipy_stats  # in [dev]: the oracle tests fail, never skip, without it
from pydantic import ValidationError

from llem_mlflow.figures.stats import (
    MIN_INTERVAL_N,
    T_TABLE_MAX_DF,
    Z_975,
    Interval,
    summarize,
    summarize_known,
    t_quantile_975,
)

# t(0.975, df) for df 1..30 as printed in statistics tables (3 decimals).
PRINTED_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110,
    18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060,
    26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
}  # fmt: skip
# Printed table values above the table range (3 decimals).
PRINTED_T975_LARGE = {40: 2.021, 60: 2.000, 120: 1.980}


def test_one_value_has_no_spread_and_no_interval() -> None:
    s = summarize([42.5])
    assert (s.n, s.values, s.mean) == (1, [42.5], 42.5)
    assert s.std is None
    assert s.ci95_low is None and s.ci95_high is None
    assert s.cv_pct is None


def test_two_values_have_spread_but_no_interval() -> None:
    """With 2 values t = 12.7: the interval was 2 -/+ 12.7 here (-10.7 for a positive figure); none now."""
    assert MIN_INTERVAL_N == 3
    for positive in (False, True):
        s = summarize([1.0, 3.0], positive=positive)
        assert s.n == 2
        assert s.mean == 2.0
        assert s.std == pytest.approx(math.sqrt(2))  # ddof=1, not sqrt(1) (ddof=0)
        assert s.cv_pct == pytest.approx(math.sqrt(2) / 2 * 100)
        assert s.ci95_low is None and s.ci95_high is None
        assert s.no_interval_reason is not None and "at least 3" in s.no_interval_reason


def test_issue_16_throughput_of_two_cycles_has_no_negative_bound() -> None:
    s = summarize([0.2, 1.2], positive=True)  # tok/s 0.7 [-2.8, 4.1] before
    assert (s.ci95_low, s.ci95_high) == (None, None)


def test_three_values_by_hand_linear() -> None:
    s = summarize([1.0, 2.0, 6.0])
    assert s.scale == "linear" and s.mean == 3.0
    assert s.std == pytest.approx(math.sqrt(7))
    half = 4.302653 * math.sqrt(7) / math.sqrt(3)
    assert (s.ci95_low, s.ci95_high) == (pytest.approx(3.0 - half), pytest.approx(3.0 + half))
    assert s.ci95_low is not None and s.ci95_low < 0  # a net figure may be negative: linear is right


def test_three_values_by_hand_log_scale() -> None:
    s = summarize([1.0, 2.0, 6.0], positive=True)
    assert s.scale == "log" and s.mean == 3.0 and s.std == pytest.approx(math.sqrt(7))
    logs = [0.0, math.log(2.0), math.log(6.0)]
    centre = sum(logs) / 3
    spread = math.sqrt(sum((x - centre) ** 2 for x in logs) / 2)
    half = 4.302653 * spread / math.sqrt(3)
    assert s.ci95_low == pytest.approx(math.exp(centre - half), rel=1e-6)
    assert s.ci95_high == pytest.approx(math.exp(centre + half), rel=1e-6)
    assert s.ci95_low is not None and 0 < s.ci95_low < 1.0  # the linear interval's low was -3.57


@pytest.mark.parametrize(
    "values", [[1.0, 2.0, 6.0], [0.05, 9.0, 0.01, 3.0], [1e-6, 1.0, 1e6], [100.0, 101.0, 99.0, 400.0, 1.0]]
)
def test_positive_quantities_never_get_a_bound_at_or_below_zero(values: list[float]) -> None:
    linear_low = summarize(values).ci95_low
    assert linear_low is not None and linear_low < 0  # what the linear rule published
    s = summarize(values, positive=True)
    assert s.ci95_low is not None and s.ci95_high is not None
    assert 0 < s.ci95_low < s.ci95_high


def test_positive_quantity_with_a_zero_value_gets_no_interval() -> None:
    s = summarize([0.0, 1.0, 2.0], positive=True)
    assert (s.ci95_low, s.ci95_high) == (None, None)
    assert s.no_interval_reason is not None and "not positive" in s.no_interval_reason
    assert s.std == pytest.approx(1.0)


def test_log_scale_interval_matches_scipy() -> None:
    values = [101.2, 98.7, 103.9, 99.5, 100.8, 102.2, 97.9, 30.0]
    s = summarize(values, positive=True)
    logs = [math.log(v) for v in values]
    low, high = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=sum(logs) / len(logs), scale=scipy_stats.sem(logs)
    )
    assert s.ci95_low == pytest.approx(math.exp(low), rel=1e-6)
    assert s.ci95_high == pytest.approx(math.exp(high), rel=1e-6)


def test_five_values_by_hand() -> None:
    s = summarize([10, 12, 14, 16, 18])
    assert s.mean == 14.0
    assert s.std == pytest.approx(math.sqrt(10))
    half = 2.776445 * math.sqrt(10) / math.sqrt(5)
    assert s.ci95_low == pytest.approx(14 - half, abs=1e-5)
    assert s.ci95_high == pytest.approx(14 + half, abs=1e-5)
    assert s.cv_pct == pytest.approx(math.sqrt(10) / 14 * 100)


def test_interval_matches_scipy() -> None:
    values = [101.2, 98.7, 103.9, 99.5, 100.8, 102.2, 97.9]
    s = summarize(values)
    sem = scipy_stats.sem(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=s.mean, scale=sem)
    assert s.ci95_low == pytest.approx(low, abs=1e-5)
    assert s.ci95_high == pytest.approx(high, abs=1e-5)


def test_values_kept_in_cycle_order_as_floats() -> None:
    s = summarize([3, 1, 2])
    assert s.values == [3.0, 1.0, 2.0]
    assert all(isinstance(v, float) for v in s.values)


def test_identical_values_zero_spread() -> None:
    s = summarize([5.0, 5.0, 5.0])
    assert s.std == 0.0
    assert s.ci95_low == 5.0 and s.ci95_high == 5.0
    assert s.cv_pct == 0.0
    log = summarize([5.0, 5.0, 5.0], positive=True)
    assert log.ci95_low == pytest.approx(5.0) and log.ci95_high == pytest.approx(5.0)


def test_cv_none_when_mean_is_zero() -> None:
    s = summarize([-1.0, 1.0])
    assert s.mean == 0.0
    assert s.std == pytest.approx(math.sqrt(2))
    assert s.cv_pct is None


def test_cv_uses_absolute_mean() -> None:
    s = summarize([-2.0, -4.0])
    assert s.cv_pct is not None and s.cv_pct > 0
    assert s.cv_pct == pytest.approx(math.sqrt(2) / 3 * 100)


@pytest.mark.parametrize("values", [[], [1.0, math.nan], [math.inf], [1.0, -math.inf]])
def test_empty_or_non_finite_raises(values: list[float]) -> None:
    with pytest.raises(ValueError):
        summarize(values)


def test_interval_is_frozen_and_forbids_extra() -> None:
    s = summarize([1.0, 2.0, 3.0])
    with pytest.raises(ValidationError):
        s.mean = 3.0
    with pytest.raises(ValidationError):
        Interval(values=[1.0], n=1, mean=1.0, median=1.0)  # type: ignore[call-arg]


def test_interval_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValidationError):
        Interval(values=[1.0, 2.0], n=3, mean=1.5)
    with pytest.raises(ValidationError):
        Interval(values=[1.0], n=1, mean=1.0, std=0.0)
    with pytest.raises(ValidationError):
        Interval(values=[1.0, 2.0], n=2, mean=1.5)
    with pytest.raises(ValidationError, match="positive on the log scale"):
        Interval(values=[1.0, 2.0, 3.0], n=3, mean=2.0, std=1.0, ci95_low=-0.5, ci95_high=4.5, scale="log")
    with pytest.raises(ValidationError, match="both set or both None"):
        Interval(values=[1.0, 2.0, 3.0], n=3, mean=2.0, std=1.0, ci95_low=0.5)


def test_interval_round_trips_json() -> None:
    for s in (summarize([1.0, 2.0, 4.0]), summarize_known([1.0, None, 2.0, 4.0], positive=True)):
        assert s is not None and Interval.model_validate_json(s.model_dump_json()) == s


def test_a_result_written_before_the_rules_still_reads() -> None:
    old = '{"values": [1.0, 3.0], "n": 2, "mean": 2.0, "std": 1.4142, "ci95_low": -10.7, "ci95_high": 14.7}'
    s = Interval.model_validate_json(old)
    assert s.scale == "linear" and s.left_out == []
    assert summarize(s.values, positive=True).ci95_low is None  # recomputed under today's rules


def test_summarize_known_leaves_unknown_values_out() -> None:
    s = summarize_known([1.0, None, 3.0, 2.0])
    assert s is not None and s.values == [1.0, 3.0, 2.0] and s.n == 3 and s.left_out == [1]
    assert s.ci95_low == summarize([1.0, 3.0, 2.0]).ci95_low
    assert summarize_known([None, None]) is None
    s = summarize_known([1.0, 3.0])
    assert s is not None and s == summarize([1.0, 3.0]) and s.left_out == []
    with pytest.raises(ValueError):
        summarize_known([])


@pytest.mark.parametrize("df", sorted(PRINTED_T975))
def test_t_table_matches_printed_tables(df: int) -> None:
    assert round(t_quantile_975(df), 3) == pytest.approx(PRINTED_T975[df], abs=1e-9)


@pytest.mark.parametrize("df", sorted(PRINTED_T975_LARGE))
def test_t_approximation_matches_printed_tables(df: int) -> None:
    assert t_quantile_975(df) == pytest.approx(PRINTED_T975_LARGE[df], abs=1e-3)


def test_t_quantile_matches_scipy() -> None:
    for df in range(1, T_TABLE_MAX_DF + 1):
        assert abs(t_quantile_975(df) - scipy_stats.t.ppf(0.975, df)) < 1e-6, df
    for df in [*range(T_TABLE_MAX_DF + 1, 301), 500, 1000, 10_000, 1_000_000]:
        assert abs(t_quantile_975(df) - scipy_stats.t.ppf(0.975, df)) < 1e-3, df
        assert abs(t_quantile_975(df) - scipy_stats.t.ppf(0.975, df)) < 1e-6, df  # what the doc claims


def test_t_quantile_decreases_towards_normal() -> None:
    qs = [t_quantile_975(df) for df in range(1, 200)]
    assert all(a > b for a, b in zip(qs, qs[1:], strict=False))
    assert qs[-1] > Z_975
    assert t_quantile_975(10**9) == pytest.approx(Z_975, abs=1e-8)


@pytest.mark.parametrize("df", [0, -1, True, 2.0])
def test_t_quantile_rejects_bad_df(df: int) -> None:
    with pytest.raises(ValueError):
        t_quantile_975(df)
