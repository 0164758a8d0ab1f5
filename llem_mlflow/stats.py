"""Repeated-cycle statistics: mean, sample spread and the 95 % confidence interval of the mean.

This module owns how a quantity measured once per cycle (energy in J, time in s, J/token...) is
summarised over repeated cycles. Pure Python; no numpy or scipy.

Rules:

- ``values`` keeps every cycle's value, in cycle order; ``n`` is how many there are.
- ``mean`` is the arithmetic mean.
- ``std`` is the sample standard deviation (divisor n - 1, "ddof=1"). It needs two cycles: with one
  cycle it is None, not 0, because one run says nothing about the spread.
- ``ci95_low`` / ``ci95_high`` bound the two-sided 95 % Student t interval of the mean:
  mean -/+ t(0.975, n - 1) x std / sqrt(n). On one run the interval is absent (None), not zero.
- ``cv_pct`` is the coefficient of variation, std / |mean| x 100. None when n < 2 or when the mean is
  exactly 0 (the ratio is undefined).
- Input must hold at least one value and every value must be finite; otherwise ``ValueError``.
- ``summarize_optional`` returns None when any cycle's value is None (e.g. energy not measured on a
  machine without NVML): a partial series would hide cycles, so nothing is summarised.

The t quantile t(0.975, df) comes from a table for df 1..30 (values of scipy.stats.t.ppf(0.975, df) to
6 decimals; rounded to 3 decimals they are the printed tables: 12.706, 4.303, 3.182, ...). For df > 30
it is the Cornish-Fisher expansion of the Student t quantile around the normal quantile
z = 1.959963985 (Abramowitz & Stegun 26.7.5, four correction terms in 1/df); at df = 31 its error is
below 1e-6 and it shrinks as df grows, so it is well inside the 1e-3 bound the module promises.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, model_validator

# t(0.975, df) for df = 1..30 (index df - 1), scipy.stats.t.ppf(0.975, df) to 6 decimals.
_T975_TABLE: tuple[float, ...] = (
    12.706205,
    4.302653,
    3.182446,
    2.776445,
    2.570582,
    2.446912,
    2.364624,
    2.306004,
    2.262157,
    2.228139,
    2.200985,
    2.178813,
    2.160369,
    2.144787,
    2.131450,
    2.119905,
    2.109816,
    2.100922,
    2.093024,
    2.085963,
    2.079614,
    2.073873,
    2.068658,
    2.063899,
    2.059539,
    2.055529,
    2.051831,
    2.048407,
    2.045230,
    2.042272,
)

#: Largest degrees of freedom served from the table; above it the Cornish-Fisher expansion is used.
T_TABLE_MAX_DF = len(_T975_TABLE)

#: Standard normal quantile at 0.975 (the df -> infinity limit of t(0.975, df)).
Z_975 = 1.959963984540054


class Interval(BaseModel):
    """Per-cycle values of one quantity and their summary (see the module docstring for each rule)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    values: list[float]  # one per cycle, in cycle order
    n: int
    mean: float
    std: float | None = None  # sample std (ddof=1); None when n < 2
    ci95_low: float | None = None  # mean - t(0.975, n-1) * std / sqrt(n); None when n < 2
    ci95_high: float | None = None  # mean + t(0.975, n-1) * std / sqrt(n); None when n < 2
    cv_pct: float | None = None  # std / |mean| * 100; None when n < 2 or mean == 0

    @model_validator(mode="after")
    def _consistent(self) -> Interval:
        if self.n < 1 or self.n != len(self.values):
            raise ValueError("n must equal the number of values and be at least 1")
        spread = (self.std, self.ci95_low, self.ci95_high)
        if self.n < 2 and any(v is not None for v in (*spread, self.cv_pct)):
            raise ValueError("with one value, std, the interval and cv_pct must be None")
        if self.n >= 2 and any(v is None for v in spread):
            raise ValueError("with two or more values, std and the interval must be set")
        return self


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % Student t critical value t(0.975, df) for ``df`` >= 1 degrees of freedom.

    Table values for df 1..30; Cornish-Fisher expansion (|error| < 1e-6) above. ``ValueError`` if df < 1.
    """
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"degrees of freedom must be an integer >= 1, got {df!r}")
    if df <= T_TABLE_MAX_DF:
        return _T975_TABLE[df - 1]
    z = Z_975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    nu = float(df)
    return z + g1 / nu + g2 / nu**2 + g3 / nu**3 + g4 / nu**4


def summarize(values: Sequence[float]) -> Interval:
    """Mean, sample std, 95 % t interval of the mean and CV of per-cycle ``values`` (kept in order).

    ``ValueError`` on an empty sequence or any non-finite value (NaN, +-inf).
    """
    if len(values) == 0:
        raise ValueError("cannot summarise an empty series of cycle values")
    floats = [float(v) for v in values]
    bad = [i for i, v in enumerate(floats) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"cycle values must be finite; cycles {bad} are not: {[floats[i] for i in bad]}")
    n = len(floats)
    mean = statistics.fmean(floats)
    if n < 2:
        return Interval(values=floats, n=n, mean=mean)
    std = statistics.stdev(floats)
    half_width = t_quantile_975(n - 1) * std / math.sqrt(n)
    return Interval(
        values=floats,
        n=n,
        mean=mean,
        std=std,
        ci95_low=mean - half_width,
        ci95_high=mean + half_width,
        cv_pct=None if mean == 0 else std / abs(mean) * 100,
    )


def summarize_optional(values: Sequence[float | None]) -> Interval | None:
    """``summarize`` of ``values``, or None when any value is None (the quantity was not measured).

    An empty sequence still raises ``ValueError``, as in ``summarize``.
    """
    present = [v for v in values if v is not None]
    if len(present) != len(values):
        return None
    return summarize(present)
