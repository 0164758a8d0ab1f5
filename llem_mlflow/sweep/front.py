"""A sweep's energy-latency front: which points are Pareto-optimal over J/output token and a latency
figure (``figures.pareto``), as tags on the children (``llem.pareto=true|false``), tags on the parent
(the latency axis and the front's points) and ``pareto.png``. A figure never fails a sweep: a drawing that
fails is a warning, and a sweep with fewer than two points that have both figures has no front.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llem_mlflow.figures import pareto
from llem_mlflow.sweep.summary import Row

log = logging.getLogger(__name__)

#: Child tag: whether the point is on the front (only points with both figures are tagged).
PARETO_TAG = "llem.pareto"


@dataclass(frozen=True)
class SweepFront:
    """The front of a sweep's points, and what to tag and log."""

    latency_metric: str | None
    front: list[pareto.FrontPoint] = field(default_factory=list)
    child_tags: dict[str, dict[str, str]] = field(default_factory=dict)  # run id -> tags
    parent_tags: dict[str, str] = field(default_factory=dict)
    figure: Path | None = None


def sweep_front(rows: Sequence[Row], folder: Path, title: str) -> SweepFront:
    """The front over the rows that have a run, ``pareto.png`` in ``folder`` (when two points or more)."""
    measured = [r for r in rows if r.run_id]
    metric = pareto.default_latency_metric([r.metrics for r in measured])
    points, skipped = pareto.points_from(
        ((r.point.label, r.metrics, r.run_id) for r in measured), pareto.ENERGY_METRIC, metric
    )
    for s in skipped:
        log.info("pareto: point %s left out: %s", s.label, s.reason)
    if metric is None or len(points) < 2:
        return SweepFront(metric)
    best = pareto.front(points)
    on_front = {str(p.key) for p in best}
    child_tags = {str(p.key): {PARETO_TAG: str(str(p.key) in on_front).lower()} for p in points}
    parent_tags = {
        "llem.pareto.latency_metric": metric,
        "llem.pareto.front": ", ".join(p.label for p in best)[:4000],
    }
    return SweepFront(metric, best, child_tags, parent_tags, _draw(folder, points, best, metric, title))


def _draw(
    folder: Path, points: list[pareto.FrontPoint], best: list[pareto.FrontPoint], metric: str, title: str
) -> Path | None:
    from llem_mlflow.results.pareto_plot import PARETO_PNG, write_pareto_png

    try:
        return write_pareto_png(
            folder, points, best, energy_metric=pareto.ENERGY_METRIC, latency_metric=metric, title=title
        )
    except Exception as exc:  # noqa: BLE001 - matplotlib, a full disk: the measurements are saved already
        log.warning("%s not drawn: %s: %s", PARETO_PNG, type(exc).__name__, exc)
        return None
