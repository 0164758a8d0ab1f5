"""Sweeps: a plan (``plan``) measured point by point (``measuring``, or one worker per GPU: ``parallel``)
as nested MLflow runs, then summarized (``summary``).

``run_sweep`` runs a plan: one MLflow parent run (``tracking.open_sweep_parent``: tag
``llem.sweep.id`` = the hash of the base config and the points, so running the same sweep again
finds it and skips the points already FINISHED under it, matched by ``llem.sweep.point_hash``, the
hash of the point's requested config), one nested child run per measured point, logged exactly like
``run`` (plus tag ``llem.sweep.point``). The parent gets ``sweep_summary.csv``/``.md`` (also written
to ``<output_dir>/sweep-<id>/``), ``llem.sweep.best.*`` tags and ``compare.png``. A resumed sweep's
summary keeps the earlier points' figures (their child runs' metrics), marked as the earlier attempt's
in ``note``. Groups of points that share a model run in the order of their first point in the shuffled
order, points within a group in that order.

This module is the sweep's front door: it also re-exports the names callers use (``__all__``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem_mlflow.sweep import measuring, parallel
from llem_mlflow.sweep.front import SweepFront, sweep_front
from llem_mlflow.sweep.measuring import Parts
from llem_mlflow.sweep.plan import (
    NOT_SWEPT,
    Point,
    SweepPlan,
    expand,
    load_key,
    load_sweep,
    plan_sweep,
    run_groups,
)
from llem_mlflow.sweep.summary import (
    METRIC_COLUMNS,
    SUMMARY_CSV,
    SUMMARY_MD,
    Row,
    best_rows,
    compare_png,
    markdown_table,
    write_summary,
)

if TYPE_CHECKING:
    from llem_mlflow.results.plots import ComparePlot
    from llem_mlflow.tracking.sweep_runs import DonePoint, SweepParent

__all__ = [
    "METRIC_COLUMNS",
    "NOT_SWEPT",
    "SUMMARY_CSV",
    "SUMMARY_MD",
    "Parts",
    "SweepOutcome",
    "expand",
    "load_key",
    "load_sweep",
    "markdown_table",
    "plan_sweep",
    "run_sweep",
]


@dataclass(frozen=True)
class SweepOutcome:
    """What a sweep did: a row per point (plan order), the parent run, the summary files, the best rows."""

    plan: SweepPlan
    rows: list[Row]
    parent_run_id: str | None
    summary_files: list[Path]
    best: dict[str, Row]
    #: ``compare.png`` as drawn (also logged on the parent), None when no point had a result or it failed.
    figure: ComparePlot | None = None
    #: The energy-latency front (``pareto.png``, ``llem.pareto`` tags); None before it was computed.
    front: SweepFront | None = None

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status in ("failed", "not logged")]


def run_sweep(config: str | Path | SweepPlan, parts: Parts | None = None, **overrides: Any) -> SweepOutcome:
    """Run a sweep: a YAML path (``overrides`` apply to its base config) or a ``SweepPlan``.

    Invalid points are listed and skipped; a point that fails is listed and the sweep goes on.

    Raises:
        ConfigError: the sweep file or its base config is invalid.
        TrackingError: the parent run cannot be opened or closed.
    """
    plan = config if isinstance(config, SweepPlan) else load_sweep(config, **overrides)
    parts = parts or Parts()
    if parts.gpu_ids:
        parallel.check_points(plan.points)
    parent = _open_parent(plan)
    rows: dict[int, Row] = {}
    try:
        for i, row in _settled(plan, parent):
            rows[i] = row
            parts.report(row)
        for i, row in _measure_all(plan, parent, parts, skip=set(rows)):
            rows[i] = row
            parts.report(row)
    finally:
        if len(rows) < len(plan.points) and parent is not None:  # an unexpected error: end the parent
            _close(plan, parent, [], {}, SweepFront(None), failed=True)
    ordered = [rows[i] for i in range(len(plan.points))]
    return _finish(plan, parent, ordered)


def _open_parent(plan: SweepPlan) -> SweepParent | None:
    if not plan.base.mlflow:
        return None
    from llem_mlflow._version import __version__
    from llem_mlflow.run import preflight
    from llem_mlflow.tracking.sweep_runs import SWEEP_FIELDS_TAG, SWEEP_ID_TAG, open_sweep_parent

    preflight.check_tracking(plan.base)  # a URI no MLflow store handles: exit 2, before any point

    tags = {
        SWEEP_ID_TAG: plan.sweep_id,
        SWEEP_FIELDS_TAG: ",".join(plan.fields),
        "llem.sweep.points": str(len(plan.points)),
        "llem.version": __version__,
    }
    return open_sweep_parent(
        plan.sweep_id,
        plan.run_name,
        tags,
        tracking_uri=plan.base.tracking_uri,
        experiment_name=plan.base.experiment_name,
    )


def _settled(plan: SweepPlan, parent: SweepParent | None) -> Iterator[tuple[int, Row]]:
    """Rows of points that are not measured now: invalid ones, and ones done under the parent."""
    done = parent.done if parent is not None else {}
    for i, p in enumerate(plan.points):
        if p.config is None:
            yield i, Row(p, "invalid", note=p.error or "")
        elif (earlier := done.get(p.point_hash or "")) is not None:
            yield i, _earlier_row(p, earlier, Path(plan.base.output_dir))


def _earlier_row(p: Point, earlier: DonePoint, output_dir: Path) -> Row:
    """A point FINISHED in an earlier attempt: its figures as its child run logged them, marked as such."""
    from llem_mlflow.results.files import RESULT_FILE

    folder = output_dir / earlier.experiment_id if earlier.experiment_id else None
    local = folder if folder is not None and (folder / RESULT_FILE).is_file() else None
    ended = f" (ended {_utc(earlier.end_time_ms)})" if earlier.end_time_ms else ""
    note = f"figures of the earlier attempt{ended}"
    return Row(p, "done earlier", earlier.run_id, earlier.metrics, earlier.config_hash, note, local)


def _utc(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _measure_all(
    plan: SweepPlan, parent: SweepParent | None, parts: Parts, skip: set[int]
) -> Iterator[tuple[int, Row]]:
    index = {id(p): i for i, p in enumerate(plan.points)}
    todo = [p for i, p in enumerate(plan.points) if i not in skip]
    parent_run_id = parent.run_id if parent is not None else None
    if parts.gpu_ids:
        order = [index[id(p)] for group in run_groups(todo, measuring.run_key) for p in group]
        yield from parallel.run_parallel(plan, order, parent_run_id, parts.gpu_ids, parts.worker_parts)
        return
    make = parts.make_backend or measuring.create_backend
    for group in run_groups(todo, measuring.run_key):  # the configs the points run with (GPU defaults)
        assert group[0].config is not None  # run_groups keeps valid points only
        backend = measuring.LoadOnce(make(measuring.run_config(group[0].config)))
        try:
            for p in group:
                yield index[id(p)], measuring.measure_point(p, backend, parent_run_id, parts)
        finally:
            backend.stop_server()
            del backend
            (parts.free_memory or measuring.free_memory)()


def _finish(plan: SweepPlan, parent: SweepParent | None, rows: list[Row]) -> SweepOutcome:
    folder = Path(plan.base.output_dir) / f"sweep-{plan.sweep_id}"
    files = write_summary(rows, folder)
    figure = compare_png(plan, rows, folder)
    best = best_rows(rows)
    front = sweep_front(rows, folder, f"sweep {plan.sweep_id}")
    failed = any(r.status in ("failed", "not logged") for r in rows)
    if parent is not None:
        drawn = [*([figure.path] if figure else []), *front.figures]
        _close(plan, parent, [*files, *drawn], best, front, failed=failed)
    return SweepOutcome(plan, rows, parent.run_id if parent else None, files, best, figure, front)


def _close(
    plan: SweepPlan,
    parent: SweepParent,
    files: list[Path],
    best: dict[str, Row],
    front: SweepFront,
    failed: bool,
) -> None:
    from llem_mlflow.tracking.sweep_runs import close_sweep_parent

    tags = {f"llem.sweep.best.{name}": f"{row.run_id} {row.point.label}" for name, row in best.items()}
    tags |= front.parent_tags
    close_sweep_parent(
        parent, tags, files, tracking_uri=plan.base.tracking_uri, failed=failed, child_tags=front.child_tags
    )
