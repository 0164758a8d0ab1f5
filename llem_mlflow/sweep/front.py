"""A sweep's energy-latency front: which points are Pareto-optimal over J/output token and a latency
figure (``figures.pareto``), as tags on the children (``llem.pareto=true|false``), tags on the parent
(the latency axis and the front's points) and ``pareto.png``; when every point has a quality figure
(``quality: perplexity``), the energy-quality front too (``llem.pareto.quality``, ``pareto_quality.png``).
A figure never fails a sweep: a drawing that fails is a warning, and a sweep with fewer than two points
that have both figures has no front.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llem_mlflow.figures import pareto
from llem_mlflow.sweep.summary import Row

log = logging.getLogger(__name__)

#: Child tags: whether the point is on the energy-latency / energy-quality front (points with both figures).
PARETO_TAG = "llem.pareto"
QUALITY_TAG = "llem.pareto.quality"


@dataclass(frozen=True)
class SweepFront:
    """The front of a sweep's points, and what to tag and log."""

    latency_metric: str | None
    front: list[pareto.FrontPoint] = field(default_factory=list)
    child_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # run id -> tags
    parent_tags: dict[str, str] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def sweep_front(rows: Sequence[Row], folder: Path, title: str) -> SweepFront:
    """The fronts over the rows that have a run, their figures in ``folder`` (two points or more)."""
    measured = [r for r in rows if r.run_id]
    metric = pareto.default_latency_metric([r.metrics for r in measured])
    out = SweepFront(metric)
    axes = [(metric, PARETO_TAG, "front", "pareto.png", "energy-latency")] if metric else []
    if measured and all(r.metrics.get(pareto.QUALITY_METRIC) is not None for r in measured):
        axes.append(
            (pareto.QUALITY_METRIC, QUALITY_TAG, "quality_front", "pareto_quality.png", "energy-quality")
        )
    for axis, tag, key, name, what in axes:
        items = ((r.point.label, r.metrics, r.run_id) for r in measured)
        points, skipped = pareto.points_from(items, pareto.ENERGY_METRIC, axis)
        for s in skipped:
            log.info("pareto: point %s left out: %s", s.label, s.reason)
        if len(points) < 2:
            continue
        best = pareto.front(points)
        on_front = {str(p.key) for p in best}
        for p in points:
            out.child_tags.setdefault(str(p.key), {})[tag] = str(str(p.key) in on_front).lower()
        out.parent_tags[f"llem.pareto.{key}"] = ", ".join(p.label for p in best)[:4000]
        out.parent_tags.setdefault("llem.pareto.latency_metric", str(metric))
        out.front.extend(best if axis == metric else [])
        drawn = _draw(folder, points, best, axis, f"{title}: {what} front", name)
        out.figures.extend([drawn] if drawn else [])
    return out


def _draw(
    folder: Path,
    points: list[pareto.FrontPoint],
    best: list[pareto.FrontPoint],
    metric: str,
    title: str,
    name: str,
) -> Path | None:
    from llem_mlflow.results.pareto_plot import write_pareto_png

    try:
        return write_pareto_png(
            folder,
            points,
            best,
            energy_metric=pareto.ENERGY_METRIC,
            latency_metric=metric,
            title=title,
            name=name,
        )
    except Exception as exc:  # noqa: BLE001 - matplotlib, a full disk: the measurements are saved already
        log.warning("%s not drawn: %s: %s", name, type(exc).__name__, exc)
        return None
