"""A sweep's summary: a ``Row`` per point, ``sweep_summary.csv``/``.md``, the best point of each figure
(``llem.sweep.best.*`` tags) and ``compare.png``.

``compare_png``: the points that have a result, read from their local folder or their run, drawn by
``plots.draw_compare``; a figure that cannot be drawn is a warning, never a failed sweep.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem_mlflow.errors import LlemError
from llem_mlflow.sweep.plan import Point, SweepPlan
from llem_mlflow.tracking.store_probe import one_line

if TYPE_CHECKING:
    from llem_mlflow.results.plots import ComparePlot
    from llem_mlflow.results.schema import ExperimentResult

#: Summary columns taken from a run's MLflow metrics (a new result's ``mlflow_metrics()`` has the same keys).
METRIC_COLUMNS = {
    "j_per_token": "energy/per_output_token_j",
    "j_per_token_ci95_low": "energy/per_output_token_j_ci95_low",
    "j_per_token_ci95_high": "energy/per_output_token_j_ci95_high",
    "net_j_per_token": "energy/net_per_output_token_j",
    "tok_per_s": "throughput/output_tokens_per_s",
    "ttft_p50_s": "latency/ttft_p50_s",
    "itl_p50_s": "latency/itl_p50_s",
}
COLUMNS = ("point", "status", "run_id", "config_hash", *METRIC_COLUMNS, "note")
#: ``llem.sweep.best.<name>``: (summary column, True when lower is better).
BEST = {
    "energy_per_output_token_j": ("j_per_token", True),
    "output_tokens_per_s": ("tok_per_s", False),
    "ttft_p50_s": ("ttft_p50_s", True),
}
SUMMARY_CSV, SUMMARY_MD = "sweep_summary.csv", "sweep_summary.md"
COMPARE_PNG = "compare.png"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One point's line in the summary: status ``measured``, ``done earlier``, ``invalid``, ``failed``
    or ``not logged`` (measured, files written, MLflow failed); ``note`` says why."""

    point: Point
    status: str
    run_id: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    config_hash: str | None = None
    note: str = ""
    #: The point's local result folder (None: not here, e.g. measured on another machine).
    result_dir: Path | None = None

    def cells(self) -> dict[str, Any]:
        """The row as ``COLUMNS`` -> value (None: no value)."""
        values = {name: self.metrics.get(key) for name, key in METRIC_COLUMNS.items()}
        return {
            "point": self.point.label,
            "status": self.status,
            "run_id": self.run_id,
            "config_hash": self.config_hash,
            **values,
            "note": self.note,
        }


def compare_png(plan: SweepPlan, rows: Sequence[Row], folder: Path) -> ComparePlot | None:
    """``compare.png`` in ``folder``: the points that have a result against the first swept field that
    differs (``plots.draw_compare``: tok/s and latency when no point measured energy). None, with a
    warning, when no point has a result or drawing fails: a figure never fails a sweep."""
    try:
        return _draw(plan, point_results(plan, rows), folder)
    except Exception as exc:  # matplotlib, a full disk...: the measurements are saved already
        log.warning("%s not drawn: %s: %s", COMPARE_PNG, type(exc).__name__, one_line(str(exc)))
        return None


def _draw(plan: SweepPlan, found: list[tuple[Row, ExperimentResult]], folder: Path) -> ComparePlot | None:
    if not found:
        log.warning("%s not drawn: no point has a result", COMPARE_PNG)
        return None
    from llem_mlflow.results.compare import compare, incomparable_reason
    from llem_mlflow.results.plots import draw_compare

    reason = incomparable_reason([result for _, result in found])
    if reason is not None:
        log.warning("%s: %s; drawn anyway", COMPARE_PNG, reason)
    comparison = compare([(row.point.label, row.run_id, result) for row, result in found])
    axis = next((f for f in plan.fields if f in comparison.differing), comparison.first_field())
    labelled = [
        replace(drawn, label=_short_label(row.point, axis))
        for drawn, (row, _) in zip(comparison.rows, found, strict=True)
    ]
    return draw_compare(labelled, axis, folder / COMPARE_PNG)


def point_results(plan: SweepPlan, rows: Sequence[Row]) -> list[tuple[Row, ExperimentResult]]:
    """Each row that has a result, with it: its local folder's ``result.json``, else its run's
    (downloaded). A result that cannot be read is left out with a warning."""
    out = []
    for row in rows:
        try:
            result = _row_result(plan, row)
        except LlemError as exc:
            log.warning("%s leaves out point %s: %s", COMPARE_PNG, row.point.label, one_line(str(exc)))
            continue
        if result is not None:
            out.append((row, result))
    return out


def _row_result(plan: SweepPlan, row: Row) -> ExperimentResult | None:
    from llem_mlflow.results import files as artifacts
    from llem_mlflow.tracking.stored_results import read_results
    from llem_mlflow.tracking.uris import target_tracking_uri

    if row.result_dir is not None and (row.result_dir / artifacts.RESULT_FILE).is_file():
        return artifacts.read_result_json(row.result_dir / artifacts.RESULT_FILE)
    if row.run_id is None:
        return None
    uri = target_tracking_uri(plan.base.tracking_uri)
    return read_results(uri, run_ids=[row.run_id])[0].result


def _short_label(p: Point, axis: str) -> str:
    """``precision=bf16, cache=static``: a point's overrides but the x axis's, as the figure labels it."""
    return ", ".join(f"{name}={value}" for name, value in p.overrides.items() if name != axis)


def best_rows(rows: Sequence[Row]) -> dict[str, Row]:
    """Per ``BEST`` figure, the row with a run and the best value (lowest J/token and TTFT, highest tok/s)."""
    best: dict[str, Row] = {}
    for name, (column, lower) in BEST.items():
        key = METRIC_COLUMNS[column]
        scored = [r for r in rows if r.run_id and r.metrics.get(key) is not None]
        if scored:
            pick = min if lower else max
            best[name] = pick(scored, key=lambda r, k=key: r.metrics[k])  # type: ignore[misc]
    return best


def write_summary(rows: Sequence[Row], folder: Path) -> list[Path]:
    """``sweep_summary.csv`` (every column, raw values) and ``sweep_summary.md`` (for reading)."""
    folder.mkdir(parents=True, exist_ok=True)
    from llem_mlflow.results.files import write_text_atomic

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(r.cells() for r in rows)
    csv_path = write_text_atomic(folder / SUMMARY_CSV, buffer.getvalue())
    md_path = write_text_atomic(folder / SUMMARY_MD, markdown_table(rows) + "\n")
    return [csv_path, md_path]


def markdown_table(rows: Sequence[Row]) -> str:
    """The summary as Markdown: point, status, run, J/token [95% CI], net J/token, tok/s, TTFT, ITL."""
    head = [
        "point",
        "status",
        "run",
        "J/token",
        "95% CI",
        "net J/token",
        "tok/s",
        "TTFT p50 ms",
        "ITL p50 ms",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = r.cells()
        ci = (
            f"{_num(c['j_per_token_ci95_low'])} - {_num(c['j_per_token_ci95_high'])}"
            if c["j_per_token_ci95_low"] is not None
            else ""
        )
        shown = ("invalid", "failed", "not logged", "done earlier")
        status = f"{r.status}: {r.note}" if r.status in shown and r.note else r.status
        cells = [f"`{c['point']}`", status.replace("|", "/"), c["run_id"] or "", _num(c["j_per_token"]), ci]
        cells += [_num(c["net_j_per_token"]), _num(c["tok_per_s"]), _ms(c["ttft_p50_s"]), _ms(c["itl_p50_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.3g}"
