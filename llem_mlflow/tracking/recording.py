"""Logging a result to MLflow exactly once: the one protocol, for a result folder or a result in memory.

Every path that logs a result goes through ``log_once``: ``log_folder`` for a result folder (result.json +
timeseries.parquet): the run's own logging (``runner``), a sweep's points, ``llem-mlflow log DIR`` and
``llem-mlflow sync`` (``spool``); ``log_from_memory`` for a result no file of which could be written (a
full disk, a file size limit: ``runner``). Under the result's lock (an fcntl lock held from the search to
the last byte logged, so two processes never log one result at once): ``result_lock(folder)`` for a folder,
``memory_lock`` for a result in memory (its folder's lock where that folder can hold one, else a lock
file named by the llem experiment id in the spool folder, else in a private folder of the temp folder;
both in ``locks``, re-exported here):

1. find the run that already holds the result: the folder's ``mlflow_run.json``, else the run tag
   ``llem.experiment_id`` (``claims.claim_result``). A FINISHED run (KILLED for an interrupted
   result) holds it: nothing is logged again;
2. retire every other run of the result that an earlier, broken try left behind (RUNNING, FAILED or
   KILLED without the result's own ``llem.status = interrupted``): tagged ``llem.retired`` (why),
   ended KILLED if it was still RUNNING, and soft-deleted (``mlflow runs restore`` brings it back; ``mlflow
   gc`` removes it). The run ``mlflow run`` made (``MLFLOW_RUN_ID``) and an active fluent run are kept;
3. log into a new run (or the run the caller opened); a create whose reply never came is looked up by
   its ``llem.create_token`` tag before it counts as failed, and duplicates a retried create made are
   retired (``result_logging.record_result``);
4. write ``mlflow_run.json`` (a folder that cannot be written only warns); a result logged from memory
   gets result.json as a text artifact instead (best effort: MLflow needs a temp file for it).

A result is logged into the experiment and under the run name saved with it (``result.config``) unless
the caller names others. The files are always written before ``log_folder`` is called, so a failure there
never loses a measurement; result.json is never rewritten.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from llem_mlflow.errors import TrackingError
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.tracking import claims
from llem_mlflow.tracking.locks import LOCK_FILE, ResultBusy, memory_lock, result_lock
from llem_mlflow.tracking.result_logging import log_text_quietly, record_result
from llem_mlflow.tracking.runs import ChildOf, LoggedRun, active_run_id

__all__ = [
    "LOCK_FILE",
    "LoggedRun",
    "ResultBusy",
    "log_folder",
    "log_from_memory",
    "log_once",
    "memory_lock",
    "remember",
    "result_lock",
]

log = logging.getLogger(__name__)


def log_folder(
    folder: Path,
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
    loaded: tuple[ExperimentResult, PowerTrace] | None = None,
    child_of: ChildOf | None = None,
    *,
    locked: bool = False,
) -> LoggedRun:
    """Log a result folder (result.json + trace) to MLflow unless a run already holds it (module docstring).

    ``experiment_name``/``run_name``: None keeps the names saved with the result. ``child_of``: a new run
    nested under that parent receives it (a sweep's point). ``locked``: the caller already holds
    ``result_lock(folder)``.

    Returns:
        The run; ``already_logged`` is True when it was found in the store and nothing was logged.

    Raises:
        TrackingError: logging failed; the message says the files are safe in ``folder``.
    """
    json_path, trace_path = folder / artifacts.RESULT_FILE, folder / artifacts.TRACE_FILE
    result, trace = loaded or (
        artifacts.read_result_json(json_path),
        artifacts.read_trace_parquet(trace_path),
    )
    files = [json_path, trace_path, *_extra_files(folder)]
    with contextlib.nullcontext() if locked else result_lock(folder):
        record = artifacts.read_run_record(folder)
        hint = record["run_id"] if record else None
        try:
            logged = log_once(result, trace, files, tracking_uri, experiment_name, run_name, child_of, hint)
        except TrackingError as exc:
            raise TrackingError(
                f"{exc}\nThe result is saved in {folder}; log it later with: llem-mlflow log {folder}"
            ) from None
        if _differs(record, logged):
            remember(folder, logged)
    return logged


def log_from_memory(
    result: ExperimentResult,
    trace: PowerTrace,
    folder: Path,
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
    child_of: ChildOf | None = None,
) -> LoggedRun:
    """Log a result no file of which could be written (``folder``: where it was meant to go) from memory,
    by the same protocol as a folder (module docstring) under ``memory_lock``: params, tags, metrics and the
    trace as metric history; result.json as a text artifact of a new run (a failure only warns).

    Returns:
        The run; ``already_logged`` is True when it was found in the store and nothing was logged.

    Raises:
        TrackingError: one line; logging failed.
    """
    with memory_lock(result.experiment_id, folder):
        logged = log_once(result, trace, [], tracking_uri, experiment_name, run_name, child_of)
        if not logged.already_logged:
            text = result.model_dump_json(indent=2)
            log_text_quietly(tracking_uri, logged.run_id, artifacts.RESULT_FILE, text)
    return logged


def log_once(
    result: ExperimentResult,
    trace: PowerTrace,
    files: Sequence[Path],
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
    child_of: ChildOf | None = None,
    run_id_hint: str | None = None,
) -> LoggedRun:
    """Steps 1 to 3 of the protocol (module docstring) for a result whose lock the caller holds: the run
    already holding it, else a new run holding ``result``, ``trace`` and ``files``, logged into the
    experiment and under the run name saved with the result unless others are given.

    Raises:
        TrackingError: one line; the store is unreachable, or the search or logging failed.
    """
    return _claimed(result, tracking_uri, run_id_hint) or record_result(
        result,
        files,
        trace,
        tracking_uri=tracking_uri,
        experiment_name=experiment_name or result.config.experiment_name,
        run_name=run_name or result.config.run_name,
        child_of=child_of,
    )


def _claimed(result: ExperimentResult, tracking_uri: str | None, run_id_hint: str | None) -> LoggedRun | None:
    """The run already holding the result, after retiring the half-logged ones (steps 1 and 2)."""
    keep = [run_id for run_id in (os.environ.get("MLFLOW_RUN_ID"), active_run_id()) if run_id]
    claim = claims.claim_result(
        result.experiment_id, tracking_uri=tracking_uri, run_id_hint=run_id_hint, keep=keep
    )
    for run_id in claim.retired:
        log.warning("retired run %s: an earlier, unfinished try at logging %s", run_id, result.experiment_id)
    return claim.logged


def _differs(record: dict[str, str] | None, logged: LoggedRun) -> bool:
    """Whether ``mlflow_run.json`` (``record``) does not name ``logged`` yet."""
    now = (logged.run_id, logged.tracking_uri)
    return record is None or (record["run_id"], record["tracking_uri"]) != now


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
    """Files logged beside result.json and the trace when the folder has them (``power.png``, and the
    server scenario's ``requests.parquet``)."""
    from llem_mlflow.results.plots import POWER_FILE

    return [path for path in (folder / POWER_FILE, folder / artifacts.REQUESTS_FILE) if path.is_file()]
