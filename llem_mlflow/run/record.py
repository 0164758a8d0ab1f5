"""Writing a run's files: timeseries.parquet, result.json and power.png into the result folder, or,
when it cannot hold them (a full disk, a file size limit), into the first other place that can
(``_rescue``: the temp folder, then the spool folder), else nowhere: the result stays in memory
(``_Written.on_disk`` False). Also the partial trace of a run interrupted before any measured batch.

Names with a leading underscore are the run package's own (used by its modules), not public API.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llem_mlflow.errors import TrackingError
from llem_mlflow.measure import stages as measure
from llem_mlflow.measure.progress import Progress
from llem_mlflow.measure.timings import Stopwatch
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult, Timings
from llem_mlflow.tracking import spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Written:
    """The result as written and where its files are: the result folder, else where ``_rescue`` put
    them (``problem``: why the result folder could not hold them), else nowhere (``on_disk`` False)."""

    result: ExperimentResult
    folder: Path
    problem: str | None = None
    on_disk: bool = True


def _write(
    result: ExperimentResult, m: measure.Measurement, folder: Path, show: Progress, clock: Stopwatch
) -> _Written:
    """Write the result files into ``folder``; when it cannot hold them (a full disk, a file size
    limit), into the first other place that can (``_rescue``), so the disk never costs the measurement."""
    try:
        return _Written(_write_files(result, m, folder, show, clock), folder)
    except TrackingError as exc:
        problem = str(exc)
    log.warning("%s; writing the result elsewhere", problem)
    return _rescue(result, m, folder, problem, show, clock)


def _write_files(
    result: ExperimentResult, m: measure.Measurement, folder: Path, show: Progress, clock: Stopwatch
) -> ExperimentResult:
    """Write timeseries.parquet, result.json and power.png; the result as written.

    result.json gets the timings up to its own write: ``write_s`` is the trace file's, no ``log_s``.
    """
    windows = {name: (w.start_s, w.end_s) for name, w in result.windows.items()}
    with clock.lap("write"):
        trace_path = artifacts.write_trace_parquet(m.trace, folder, windows)
    result = result.model_copy(update={"timings": _timings(clock)})
    with clock.lap("write"):
        _write_requests(result, m, folder)
        json_path = artifacts.write_result_json(result, folder)
        _write_power_png(folder, result, m)
    show.stage(f"wrote {json_path} and {trace_path.name}")
    return result


def _rescue(
    result: ExperimentResult,
    m: measure.Measurement,
    folder: Path,
    problem: str,
    show: Progress,
    clock: Stopwatch,
) -> _Written:
    """Write the files into a new private folder of the first of ``rescue_roots()`` that holds them;
    when none does, the result stays in memory (``on_disk`` False: it is logged from memory)."""
    _remove_if_empty(folder)
    for root in rescue_roots():
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            place = Path(tempfile.mkdtemp(prefix=f"llem-{result.experiment_id}-", dir=root))
        except OSError:
            continue
        try:
            written = _write_files(result, m, place, show, clock)
        except TrackingError:
            shutil.rmtree(place, ignore_errors=True)
            continue
        return _Written(written, place, f"{problem}; the result files were written to {place} instead")
    unwritten = result.model_copy(update={"timings": _timings(clock)})
    where = ", ".join(str(root) for root in rescue_roots())
    return _Written(unwritten, folder, f"{problem}; nor could they be written in {where}", on_disk=False)


def rescue_roots() -> list[Path]:
    """Where result files go when the result folder cannot hold them: the temp folder, then the spool."""
    return [Path(tempfile.gettempdir()), spool.spool_dir()]


def _write_requests(result: ExperimentResult, m: measure.Measurement, folder: Path) -> None:
    """The server scenario's requests.parquet: every request's timings, usage, error and net joules."""
    if m.served is None:
        return
    from llem_mlflow.run import derive_serving as ds

    nets = [r.net_j for r in result.cycles.records] if result.cycles else [None] * len(m.cycles)
    joules = ds.per_request_joules(m, nets, ds.idle_power_by_gpu(m))
    artifacts.write_requests_parquet(ds.request_rows(m, joules), ds.REQUEST_COLUMNS, folder)


def _write_power_png(folder: Path, result: ExperimentResult, m: measure.Measurement) -> None:
    """power.png beside result.json (``plots``); a plotting failure only warns, never costs the run."""
    from llem_mlflow.results import plots

    try:
        plots.write_power_png(folder, result, m.trace)
    except Exception as exc:  # matplotlib missing or failing must not lose a measurement
        log.warning("power.png not written: %s", exc)


def _keep_trace(trace: PowerTrace | None, folder: Path) -> str:
    """Write the partial trace when it has samples (else remove the empty folder); say what was kept."""
    if trace is None or not trace.samples:
        _remove_if_empty(folder)
        return "nothing was measured, nothing kept"
    path = artifacts.write_trace_parquet(trace, folder, {})
    return f"kept the partial power trace in {path}"


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing; a folder with files is never touched (rmdir refuses)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _timings(clock: Stopwatch) -> Timings:
    """The laps so far as a ``Timings`` block; ``total_s``: the stopwatch's time until now."""
    return Timings(
        **{f"{name}_s": seconds for name, seconds in clock.laps.items()}, total_s=clock.elapsed_s()
    )
