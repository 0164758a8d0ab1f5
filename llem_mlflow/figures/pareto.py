"""The energy-latency front of a set of measured points (a sweep's points, or runs to compare).

Each point is placed by two MLflow metrics: energy (default ``energy/per_output_token_j``) and one
latency (``LATENCY_AXES``: ITL p50, TTFT p50 or E2E p99, in seconds). Lower is better on both.

- ``points_from`` turns (label, metrics, key) items into ``FrontPoint`` s; an item without a finite value
  of both metrics is skipped, and returned as a ``Skipped`` that says why.
- ``front`` keeps the Pareto-optimal points: those that no other point dominates (another point with
  energy <= and latency <=, one of them strictly less). Points with equal values dominate neither the
  other: both stay. The front is sorted by latency (then energy, then label).
- ``best_under`` is the lowest-energy point within a latency bound (a latency target such as
  ``compare --max-itl-ms 50``); ties in energy go to the lower latency.
- ``default_latency_metric`` picks the latency axis when none is named: ITL p50 if every point has it,
  else TTFT p50, else E2E p99, else None.

The front compares point estimates: the energy of a point is the mean over its cycles, not an
interval. Where the 95 % energy intervals of two neighbours on the front overlap (``overlaps``,
``overlapping_neighbours``) the measurements do not establish which of the two uses less energy; the
figure marks such pairs. Latency has no interval here (a percentile over the requests of a run).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from llem_mlflow.errors import ConfigError

#: Latency axis name -> its MLflow metric (seconds).
LATENCY_AXES = {
    "ttft_p50": "latency/ttft_p50_s",
    "itl_p50": "latency/itl_p50_s",
    "e2e_p99": "latency/e2e_p99_s",
}
ENERGY_METRIC = "energy/per_output_token_j"
#: The order ``default_latency_metric`` tries the latency axes in.
_LATENCY_PREFERENCE = ("itl_p50", "ttft_p50", "e2e_p99")
_AXIS_TITLES = {"ttft_p50": "TTFT p50", "itl_p50": "ITL p50", "e2e_p99": "E2E latency p99"}


@dataclass(frozen=True)
class FrontPoint:
    """One point: its label, energy (the metric's mean, e.g. J per output token), latency (seconds),
    the energy's 95 % interval (low, high) when known, and ``key``: whatever the caller uses to find the
    point again (a sweep row, a run id)."""

    label: str
    energy: float
    latency: float
    energy_ci95: tuple[float, float] | None
    key: object


@dataclass(frozen=True)
class Skipped:
    """An item ``points_from`` left out, and why (``reason``: one line)."""

    label: str
    key: object
    reason: str


def _finite(metrics: Mapping[str, float], name: str) -> float | None:
    value = metrics.get(name)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _missing_reason(metrics: Mapping[str, float], names: Sequence[str]) -> str | None:
    """Why the item cannot be placed (``no energy/... value``), or None when every metric has a number."""
    for name in names:
        if name not in metrics or metrics[name] is None:
            return f"no {name} value"
        if _finite(metrics, name) is None:
            return f"{name} is not a finite number ({metrics[name]!r})"
    return None


def _interval(metrics: Mapping[str, float], energy_metric: str) -> tuple[float, float] | None:
    low = _finite(metrics, f"{energy_metric}_ci95_low")
    high = _finite(metrics, f"{energy_metric}_ci95_high")
    return None if low is None or high is None else (low, high)


def points_from(
    items: Iterable[tuple[str, Mapping[str, float], object]],
    energy_metric: str = ENERGY_METRIC,
    latency_metric: str | None = None,
) -> tuple[list[FrontPoint], list[Skipped]]:
    """(points, skipped) from (label, MLflow metrics, key) items, in item order.

    ``latency_metric`` None: ``default_latency_metric`` of the items that have the energy metric (when
    none fits, every item is skipped with that reason). The energy interval is read from
    ``<energy_metric>_ci95_low`` / ``_high`` when both are finite numbers.
    """
    listed = list(items)
    if latency_metric is None:
        with_energy = [m for _, m, _ in listed if _finite(m, energy_metric) is not None]
        latency_metric = default_latency_metric(with_energy)
        if latency_metric is None:
            why = f"no latency metric ({', '.join(LATENCY_AXES.values())}) that every measured point has"
            return [], [Skipped(label, key, why) for label, _, key in listed]
    points: list[FrontPoint] = []
    skipped: list[Skipped] = []
    for label, metrics, key in listed:
        reason = _missing_reason(metrics, (energy_metric, latency_metric))
        if reason is not None:
            skipped.append(Skipped(label, key, reason))
            continue
        energy, latency = float(metrics[energy_metric]), float(metrics[latency_metric])
        points.append(FrontPoint(label, energy, latency, _interval(metrics, energy_metric), key))
    return points, skipped


def dominates(a: FrontPoint, b: FrontPoint) -> bool:
    """Whether ``a`` is at least as good as ``b`` on both axes and strictly better on one."""
    return a.energy <= b.energy and a.latency <= b.latency and (a.energy < b.energy or a.latency < b.latency)


def front(points: Sequence[FrontPoint]) -> list[FrontPoint]:
    """The Pareto-optimal points (no other point dominates them; equal points both stay), sorted by
    latency, then energy, then label."""
    kept = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(kept, key=lambda p: (p.latency, p.energy, p.label))


def best_under(points: Sequence[FrontPoint], max_latency: float) -> FrontPoint | None:
    """The lowest-energy point with latency <= ``max_latency`` (in the latency metric's unit, seconds);
    ties in energy go to the lower latency, then to the first in ``points``. None when no point is that
    fast.

    Raises:
        ConfigError: ``max_latency`` is not a number (NaN).
    """
    if math.isnan(max_latency):
        raise ConfigError("the latency target is not a number; give a latency bound such as 50 (ms)")
    eligible = [p for p in points if p.latency <= max_latency]
    return min(eligible, key=lambda p: (p.energy, p.latency), default=None)


def default_latency_metric(metrics_list: Sequence[Mapping[str, float]]) -> str | None:
    """The latency metric to draw against: ITL p50 if every mapping has a finite value of it, else TTFT
    p50, else E2E p99, else None (also for an empty list). Pass the points that will be placed (those
    with an energy value): a failed point with no metrics would otherwise rule out every axis."""
    if not metrics_list:
        return None
    for axis in _LATENCY_PREFERENCE:
        metric = LATENCY_AXES[axis]
        if all(_finite(m, metric) is not None for m in metrics_list):
            return metric
    return None


def overlaps(a: FrontPoint, b: FrontPoint) -> bool:
    """Whether the 95 % energy intervals of ``a`` and ``b`` overlap (touching counts): then the
    measurements do not establish which uses less energy. False when either interval is unknown (no
    interval: nothing to say, not "established")."""
    if a.energy_ci95 is None or b.energy_ci95 is None:
        return False
    (a_low, a_high), (b_low, b_high) = a.energy_ci95, b.energy_ci95
    return a_low <= b_high and b_low <= a_high


def overlapping_neighbours(front_points: Sequence[FrontPoint]) -> list[tuple[FrontPoint, FrontPoint]]:
    """The pairs of neighbours on a front (in the given order, as ``front`` returns it) whose energy
    intervals overlap: their order in energy is not established."""
    return [(a, b) for a, b in zip(front_points, front_points[1:], strict=False) if overlaps(a, b)]


#: The quality figure (``quality: perplexity``), the front's other axis when every point has it.
QUALITY_METRIC = "quality/perplexity"


def axis_title(metric: str) -> str:
    """An axis label with its unit: ``ITL p50 (ms)`` for a latency metric (drawn in ms),
    ``J per output token`` for the default energy metric, else the metric name."""
    for axis, name in LATENCY_AXES.items():
        if metric == name:
            return f"{_AXIS_TITLES[axis]} (ms)"
    if metric == ENERGY_METRIC:
        return "energy per output token (J/token)"
    if metric == "energy/net_per_output_token_j":
        return "net energy per output token (J/token)"
    if metric == QUALITY_METRIC:
        return "perplexity on the held-out text (lower is better)"
    if metric.endswith("_s"):
        return f"{metric} (ms)"
    return metric


def in_ms(metric: str) -> bool:
    """Whether a metric is in seconds and drawn in milliseconds (the latency metrics, ``*_s``)."""
    return metric.endswith("_s")
