"""Repeated-cycle statistics: mean, sample spread and the 95 % confidence interval of the mean.

This module owns how a quantity measured once per cycle (energy in J, time in s, J/token...) is
summarised over repeated cycles, and when an interval is published at all. Pure Python; no numpy or
scipy. docs/methodology.md ("Intervals across cycles") states the same rules for users.

Rules:

- ``values`` keeps every value the summary rests on, in cycle order; ``n`` is how many there are.
  ``summarize_known`` leaves out the cycles whose value is unknown (None: e.g. a GPU's energy counter
  could not be read in that cycle) and lists their positions in ``left_out``; they are in no figure.
- ``mean`` is the arithmetic mean.
- ``std`` is the sample standard deviation (divisor n - 1, "ddof=1"). It needs two values: with one
  it is None, not 0, because one run says nothing about the spread.
- ``cv_pct`` is the coefficient of variation, std / |mean| x 100. None when n < 2 or when the mean is
  exactly 0 (the ratio is undefined).
- ``ci95_low`` / ``ci95_high`` bound a two-sided 95 % Student t interval, published only from
  ``MIN_INTERVAL_N`` (3) values on. With two, t(0.975, 1) = 12.706 and the half-width is
  12.706 x std / sqrt(2) = 6.35 x |x1 - x2|: an interval 12.7 times wider than the gap between the
  only two values says nothing they do not (its expected half-width is 7.2 sigma, against 2.2 sigma
  with three values and 1.2 with five). Below 3 the bounds are None and ``no_interval_reason`` says why.
- ``scale`` says how the interval was taken, so that no bound lies outside what the quantity can take:

  * ``"linear"`` (quantities that can be negative: net energy, net J/token):
    mean -/+ t(0.975, n - 1) x std / sqrt(n);
  * ``"log"`` (quantities that are positive by nature: durations, tokens/s, gross energy, J/token):
    the t interval of the mean of ln(values), exponentiated. Both bounds are > 0; it is an interval for
    the geometric mean, which for cycle-to-cycle CVs of a few % differs from the arithmetic ``mean`` by
    about CV^2 / 2 (0.05 % at CV 3 %). A value <= 0 of a positive quantity (a counter that did not move)
    has no logarithm: no interval, with the reason.

- Input must hold at least one value and every value must be finite; otherwise ``ValueError``.

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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Fewest values from which a 95 % interval is published (see the module docstring).
MIN_INTERVAL_N = 3

Scale = Literal["linear", "log"]

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
    """Per-cycle values of one quantity and their summary (see the module docstring for each rule).

    Results written before these rules may hold a linear interval from two values; ``summarize`` of
    ``values`` recomputes the bounds under the current rules (``compare`` does).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    values: list[float]  # the values summarised, one per cycle kept, in cycle order
    n: int
    mean: float
    std: float | None = None  # sample std (ddof=1); None when n < 2
    ci95_low: float | None = None  # None when n < MIN_INTERVAL_N (no_interval_reason says why)
    ci95_high: float | None = None
    cv_pct: float | None = None  # std / |mean| * 100; None when n < 2 or mean == 0
    scale: Scale = "linear"  # how the interval is taken: "log" for positive quantities
    left_out: list[int] = Field(default_factory=list)  # positions (cycle indexes) of unknown values
    no_interval_reason: str | None = None  # why ci95_low/high are None, when n >= 2

    @model_validator(mode="after")
    def _consistent(self) -> Interval:
        if self.n < 1 or self.n != len(self.values):
            raise ValueError("n must equal the number of values and be at least 1")
        bounds = (self.ci95_low, self.ci95_high)
        if self.n < 2 and any(v is not None for v in (self.std, *bounds, self.cv_pct)):
            raise ValueError("with one value, std, the interval and cv_pct must be None")
        if self.n >= 2 and self.std is None:
            raise ValueError("with two or more values, std must be set")
        if (self.ci95_low is None) != (self.ci95_high is None):
            raise ValueError("ci95_low and ci95_high are both set or both None")
        low, high = bounds
        if low is not None and high is not None and (low > high or (self.scale == "log" and low <= 0)):
            raise ValueError("the interval must be ordered, and positive on the log scale")
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


def summarize(values: Sequence[float], *, positive: bool = False, left_out: Sequence[int] = ()) -> Interval:
    """Mean, sample std, CV and (from ``MIN_INTERVAL_N`` values) the 95 % interval of ``values``.

    ``positive``: the quantity cannot be <= 0 (durations, tokens/s, gross energy, J/token), so the
    interval is taken on the log scale; else linear. ``left_out``: positions of cycles whose value was
    unknown (recorded, not used). ``ValueError`` on an empty sequence or any non-finite value.
    """
    if len(values) == 0:
        raise ValueError("cannot summarise an empty series of cycle values")
    floats = [float(v) for v in values]
    bad = [i for i, v in enumerate(floats) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"cycle values must be finite; cycles {bad} are not: {[floats[i] for i in bad]}")
    n, mean = len(floats), statistics.fmean(floats)
    scale: Scale = "log" if positive else "linear"
    if n < 2:
        return Interval(values=floats, n=n, mean=mean, scale=scale, left_out=list(left_out))
    std = statistics.stdev(floats)
    bounds, reason = _bounds(floats, positive)
    return Interval(
        values=floats,
        n=n,
        mean=mean,
        std=std,
        ci95_low=bounds[0] if bounds else None,
        ci95_high=bounds[1] if bounds else None,
        cv_pct=None if mean == 0 else std / abs(mean) * 100,
        scale=scale,
        left_out=list(left_out),
        no_interval_reason=reason,
    )


def _bounds(values: list[float], positive: bool) -> tuple[tuple[float, float] | None, str | None]:
    """((low, high), None) or (None, why not) for two or more finite values."""
    n = len(values)
    if n < MIN_INTERVAL_N:
        return None, no_interval_reason(n)
    if positive and min(values) <= 0:
        return None, f"a value is {min(values):g}, not positive: no log-scale interval"
    points = [math.log(v) for v in values] if positive else values
    centre = statistics.fmean(points)
    half = t_quantile_975(n - 1) * statistics.stdev(points) / math.sqrt(n)
    low, high = centre - half, centre + half
    if positive:
        return (math.exp(low), math.exp(high)), None
    return (low, high), None


def no_interval_reason(n: int) -> str:
    """Why ``n`` (< ``MIN_INTERVAL_N``) values get no 95 % interval, in one sentence."""
    return (
        f"{n} value(s): a 95 % interval needs at least {MIN_INTERVAL_N} (with 2, t(0.975, 1) = 12.7 "
        "makes it 12.7 times the gap between the two values)"
    )


def summarize_known(values: Sequence[float | None], *, positive: bool = False) -> Interval | None:
    """``summarize`` of the values that are known; the positions of None values go to ``left_out``.

    None when no value is known (the quantity was not measured). ``ValueError`` on an empty sequence.
    """
    if len(values) == 0:
        raise ValueError("cannot summarise an empty series of cycle values")
    known = [v for v in values if v is not None]
    if not known:
        return None
    missing = [i for i, v in enumerate(values) if v is None]
    return summarize(known, positive=positive, left_out=missing)
