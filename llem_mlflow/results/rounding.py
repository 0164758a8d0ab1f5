"""How each logged metric value is rounded: every value keeps the precision its source has, no float
noise (266.0649999999987 is logged as 266.065). ``naming`` and ``naming_serving`` pick a rule per metric."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

# Rounding of logged metric values: each keeps the precision its source has, no float noise
# (266.0649999999987 is logged as 266.065). A metric is (value, rounding rule).
Rounded = tuple[float | None, Callable[[float], float]]


def energy_j(value: float) -> float:
    """Energy in J to 1 mJ (3 decimals): the NVML total-energy counter counts millijoules."""
    return round(value, 3)


def power_w(value: float) -> float:
    """Power in W to 1 mW (3 decimals): NVML reports power in milliwatts."""
    return round(value, 3)


def seconds(value: float) -> float:
    """Durations in s to 1 us (6 decimals)."""
    return round(value, 6)


def count(value: float) -> float:
    """Tokens, FLOPs and bytes: integral."""
    return float(round(value))


def ratio(value: float) -> float:
    """Derived ratios (J/token, tokens/s): 6 significant digits."""
    return float(f"{value:.6g}")


def percent(value: float) -> float:
    """Percentages to 4 decimals."""
    return round(value, 4)


def ci95_bounds(pairs: Mapping[str, tuple[Any, Callable[[float], float]]]) -> dict[str, Rounded]:
    """``<key>_ci95_low`` / ``_ci95_high`` for each (interval, rule) whose interval has bounds (an object
    with ``ci95_low`` and ``ci95_high``, e.g. ``figures.stats.Interval``); nothing for one without."""
    out: dict[str, Rounded] = {}
    for key, (interval, rule) in pairs.items():
        if interval is not None and interval.ci95_low is not None and interval.ci95_high is not None:
            out[f"{key}_ci95_low"] = (interval.ci95_low, rule)
            out[f"{key}_ci95_high"] = (interval.ci95_high, rule)
    return out
