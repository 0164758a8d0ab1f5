"""Logging a result folder (result.json + timeseries.parquet) to MLflow, once.

Used right after a run and by ``llem-mlflow log DIR`` to recover a folder whose logging failed.
The files are always written before this is called, so a failure here never loses a measurement.
Logging is idempotent: the folder's ``mlflow_run.json`` and the run tag ``llem.experiment_id`` find
a FINISHED run that already holds the result, and then nothing is logged again. result.json is
never rewritten.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path

from llem_mlflow import artifacts, tracking
from llem_mlflow.errors import TrackingError
from llem_mlflow.result import ExperimentResult
from llem_mlflow.trace import PowerTrace
from llem_mlflow.tracking import LoggedRun

__all__ = ["LoggedRun", "log_folder"]

log = logging.getLogger(__name__)


def log_folder(
    folder: Path,
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
    loaded: tuple[ExperimentResult, PowerTrace] | None = None,
    child_of: tracking.ChildOf | None = None,
    replace_unfinished: bool = False,
) -> LoggedRun:
    """Log a result folder (result.json + trace) to MLflow unless a FINISHED run already holds it.

    ``child_of``: a new run nested under that parent receives it (a sweep's point).
    ``replace_unfinished``: first soft-delete runs of this result that a broken earlier try left
    unfinished (``tracking.retire_unfinished``; the ``mlflow run`` run in ``MLFLOW_RUN_ID`` is kept).

    Returns:
        The run; ``already_logged`` is True when it was found in the store and nothing was logged.
        ``mlflow_run.json`` in ``folder`` then names it (a folder that cannot be written only warns).

    Raises:
        TrackingError: logging failed; the message says the files are safe in ``folder``.
    """
    json_path, trace_path = folder / artifacts.RESULT_FILE, folder / artifacts.TRACE_FILE
    result, trace = loaded or (
        artifacts.read_result_json(json_path),
        artifacts.read_trace_parquet(trace_path),
    )
    record = artifacts.read_run_record(folder)
    try:
        logged = tracking.find_logged_run(
            result.experiment_id, tracking_uri=tracking_uri, run_id_hint=record["run_id"] if record else None
        )
        if logged is None:
            if replace_unfinished:
                _retire(result, folder, tracking_uri)
            logged = tracking.record_result(
                result,
                [json_path, trace_path, *_extra_files(folder)],
                trace,
                tracking_uri=tracking_uri,
                experiment_name=experiment_name,
                run_name=run_name,
                child_of=child_of,
            )
    except TrackingError as exc:
        raise TrackingError(
            f"{exc}\nThe result is saved in {folder}; log it later with: llem-mlflow log {folder}"
        ) from None
    if record is None or (record["run_id"], record["tracking_uri"]) != (logged.run_id, logged.tracking_uri):
        remember(folder, logged)
    return logged


def _retire(result: ExperimentResult, folder: Path, tracking_uri: str | None) -> None:
    """Soft-delete runs an earlier, broken try left unfinished (the ``mlflow run`` run is kept)."""
    keep = os.environ.get("MLFLOW_RUN_ID")
    for run_id in tracking.retire_unfinished(result.experiment_id, tracking_uri=tracking_uri, keep=keep):
        log.warning("deleted run %s: an earlier, unfinished try at logging %s", run_id, folder.name)


def remember(folder: Path, logged: LoggedRun) -> None:
    """Write ``mlflow_run.json``; a failure only warns (the run is logged either way)."""
    try:
        artifacts.write_run_record(
            folder,
            run_id=logged.run_id,
            experiment_id=logged.experiment_id,
            tracking_uri=logged.tracking_uri,
            logged_at=datetime.now(timezone.utc),
        )
    except TrackingError as exc:
        log.warning("MLflow run %s holds the result, but %s", logged.run_id, exc)


def _extra_files(folder: Path) -> list[Path]:
    """Files logged beside result.json and the trace when the folder has them (``power.png``)."""
    from llem_mlflow.plots import POWER_FILE

    return [path for path in (folder / POWER_FILE,) if path.is_file()]
