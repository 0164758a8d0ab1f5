"""The statistics of the sampler overhead benchmark (``sampler_overhead.py``, whose docstring gives the
design and why): per condition, over ABBA blocks of runs (``Run``, keyed by condition name, ``None`` the run
without a sampler),

* the paired ratios ``time(condition) / time(none)`` and a distribution-free 95 % interval for their median
  (``ratios``, ``median_interval``);
* the quiet floor: the ``FLOOR_Q`` quantile of a condition's run times over that of the runs without a
  sampler, with a seeded bootstrap interval over whole blocks (``floor_ratio``, ``floor_interval``);
* the amplified estimate: paired ratio - 1 = c * buffer reads per second, least squares through the origin
  over every buffer run, a seeded block bootstrap for c, scaled to the product's read rate
  (``BUFFER_READ_PERIOD_S``), with the linearity check (``amplified``, ``linearity``);
* whether an interval is narrow enough to call a condition resolved (``narrow``, ``amplified_narrow``).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from typing import Any

from sampler_runs import Condition, Run

from llem_mlflow.measure.power_buffer import BUFFER_READ_PERIOD_S

TARGET_RATIO = 1.005


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free interval for the median: order statistics k and n+1-k, k from Binomial(n, 1/2).

    None when there are too few values (n < 6 for 95 %).
    """
    ordered, n = sorted(values), len(values)
    tail, cdf, k = (1 - level) / 2, 0.0, 0
    for i in range(n + 1):
        p = math.comb(n, i) / 2**n
        if cdf + p > tail:
            break
        cdf, k = cdf + p, i + 1
    return None if k == 0 else (ordered[k - 1], ordered[n - k])


def ratios(blocks: list[dict[str | None, Run]], mode: str) -> list[float]:
    """Per block: time(mode) / time(no sampler)."""
    return [b[mode].wall_s / b[None].wall_s for b in blocks]


FLOOR_Q = 0.2  # the quiet floor: this quantile of each condition's run times
BOOTSTRAP = 1000


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (linear between order statistics)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def floor_ratio(blocks: list[dict[str | None, Run]], mode: str, q: float = FLOOR_Q) -> float:
    """quantile_q(time with ``mode``) / quantile_q(time without): the overhead on a quiet host."""
    return quantile([b[mode].wall_s for b in blocks], q) / quantile([b[None].wall_s for b in blocks], q)


def floor_interval(blocks: list[dict[str | None, Run]], mode: str) -> tuple[float, float] | None:
    """95 % bootstrap interval of ``floor_ratio``, resampling whole blocks (seeded; None under 6 blocks)."""
    if len(blocks) < 6:
        return None
    rng = random.Random(0)
    draws = sorted(
        floor_ratio([blocks[rng.randrange(len(blocks))] for _ in blocks], mode) for _ in range(BOOTSTRAP)
    )
    return draws[int(0.025 * BOOTSTRAP)], draws[int(0.975 * BOOTSTRAP) - 1]


def narrow(interval: tuple[float, float] | None, width_pct: float) -> bool:
    """Whether ``interval`` (of a ratio) is at most ``width_pct`` % wide."""
    return interval is not None and 100 * (interval[1] - interval[0]) <= width_pct


# ----------------------------------------------------------------------------- the amplified estimate

Points = list[tuple[float, float]]  # (buffer reads per second, paired ratio - 1)


def reads_per_s(run: Run) -> float:
    """The reads of the buffers per second of run time the sampler's loop made (0 without any)."""
    return (run.buffer_reads or 0) / run.wall_s


def rate_points(blocks: list[dict[str | None, Run]], names: Sequence[str]) -> list[Points]:
    """Per block: (reads per second, time / time without a sampler - 1) of each named condition's run."""
    return [[(reads_per_s(b[k]), b[k].wall_s / b[None].wall_s - 1) for k in names] for b in blocks]


def fit_through_origin(points: Points) -> float | None:
    """Least-squares slope c of y = c * x (a line through the origin): sum(x y) / sum(x^2); None if x = 0."""
    sxx = sum(x * x for x, _ in points)
    return None if sxx <= 0 else sum(x * y for x, y in points) / sxx


def slope_interval(per_block: list[Points]) -> tuple[float, float] | None:
    """95 % bootstrap interval of ``fit_through_origin``, resampling whole blocks (seeded; None under 6
    blocks, or when a resample has no reads)."""
    if len(per_block) < 6:
        return None
    sums = [(sum(x * y for x, y in pts), sum(x * x for x, _ in pts)) for pts in per_block]
    rng = random.Random(0)
    draws = []
    for _ in range(BOOTSTRAP):
        picked = [sums[rng.randrange(len(sums))] for _ in sums]
        sxx = sum(p[1] for p in picked)
        if sxx <= 0:
            return None
        draws.append(sum(p[0] for p in picked) / sxx)
    draws.sort()
    return draws[int(0.025 * BOOTSTRAP)], draws[int(0.975 * BOOTSTRAP) - 1]


def linearity(
    blocks: list[dict[str | None, Run]], conds: Sequence[Condition], slope: float
) -> list[dict[str, Any]]:
    """Per condition: its median reads/s and median paired overhead beside the model's overhead there."""
    out = []
    for cond in conds:
        rate = statistics.median(reads_per_s(b[cond.name]) for b in blocks)
        out.append(
            {
                "condition": cond.name,
                "buffer_period_s": cond.buffer_period_s,
                "reads_per_s_median": rate,
                "overhead_pct_median": 100 * (statistics.median(ratios(blocks, cond.name)) - 1),
                "overhead_pct_model": 100 * slope * rate,
            }
        )
    return out


def amplified(blocks: list[dict[str | None, Run]], conds: Sequence[Condition]) -> dict[str, Any] | None:
    """The product's overhead from the fit of every buffer run's paired ratio against its read rate.

    None unless some buffer condition reads faster than the product (or no run read at all).
    """
    buffered = [c for c in conds if c.mode == "buffer"]
    if not blocks or not any(c.buffer_period_s < BUFFER_READ_PERIOD_S for c in buffered):
        return None
    per_block = rate_points(blocks, [c.name for c in buffered])
    slope = fit_through_origin([p for pts in per_block for p in pts])
    if slope is None:
        return None
    ci = slope_interval(per_block)
    product_rate = 1 / BUFFER_READ_PERIOD_S
    return {
        "model": "ratio - 1 = c * buffer reads per second, least squares through the origin",
        "pairs": len(blocks),
        "points": len(blocks) * len(buffered),
        "slope_per_read_per_s": slope,
        "slope_ci95": ci,
        "product_reads_per_s": product_rate,
        "overhead_pct_amplified": 100 * slope * product_rate,
        "overhead_pct_amplified_ci95": None
        if ci is None
        else (100 * ci[0] * product_rate, 100 * ci[1] * product_rate),
        "meets_ratio_target_amplified": ci is not None and 1 + ci[1] * product_rate <= TARGET_RATIO,
        "linearity": linearity(blocks, buffered, slope),
    }


def amplified_narrow(fit: dict[str, Any] | None, width_pct: float) -> bool:
    """Whether the 95 % interval of the amplified overhead (%) is at most ``width_pct`` wide."""
    ci = None if fit is None else fit["overhead_pct_amplified_ci95"]
    return ci is not None and ci[1] - ci[0] <= width_pct
