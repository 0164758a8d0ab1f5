"""Logging a written result to MLflow, exactly once (``recording``), and what happens when that fails:
a failure spools the result for ``llem-mlflow sync``; a signal cuts logging short (``_Cut``: the result
spooled first, the half-logged run ended KILLED). ``Outcome`` says what a run produced and where.

Names with a leading underscore are the run package's own (used by its modules), not public API.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from llem_mlflow import interrupts
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import TrackingError
from llem_mlflow.measure import stages as measure
from llem_mlflow.measure.progress import Progress
from llem_mlflow.measure.timings import Stopwatch
from llem_mlflow.results.schema import ExperimentResult, Timings
from llem_mlflow.run import preflight
from llem_mlflow.run.record import _Written
from llem_mlflow.tracking import recording, spool
from llem_mlflow.tracking.connection import mlflow_version
from llem_mlflow.tracking.run_endings import end_cut, mlflow_run_keeps_status
from llem_mlflow.tracking.runs import ChildOf


@dataclass(frozen=True)
class Outcome:
    """What one run produced: the result, its folder and the MLflow run id (None with mlflow off)."""

    result: ExperimentResult
    result_dir: Path
    run_id: str | None
    tracking_error: str | None = None  # MLflow failed after the files were written (message has the hint)
    write_error: str | None = None  # the result folder could not hold the files: what was kept where
    timings: Timings | None = None  # every stage to the end of logging (result.timings: to result.json)


@dataclass(frozen=True)
class _Logging:
    """How to log: ``reprobe`` the store (it was down at the start); nest under ``child_of``'s parent.

    ``mlflow_run``: the run ``mlflow run`` made for this process (``MLFLOW_RUN_ID`` when this was made).
    """

    reprobe: preflight.StoreProbe | None
    child_of: ChildOf | None
    mlflow_run: str | None = field(default_factory=lambda: os.environ.get("MLFLOW_RUN_ID"))


class _Cut(Exception):  # noqa: N818 - it names what happened
    """A signal cut MLflow logging short; the message says where the result is and the way back."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


def _publish(
    cfg: ExperimentConfig,
    w: _Written,
    m: measure.Measurement,
    how: _Logging,
    show: Progress,
    clock: Stopwatch,
) -> Outcome:
    """Log the written files as ``how`` says (nothing with ``mlflow: false``)."""
    if not cfg.mlflow:
        return Outcome(result=w.result, result_dir=w.folder, run_id=None)
    show.stage("logging to MLflow")
    with clock.lap("log"):
        return _log(cfg, w, m, how)


def _log(cfg: ExperimentConfig, w: _Written, m: measure.Measurement, how: _Logging) -> Outcome:
    """Log ``w``; a failure spools it. A signal (first or repeated) cuts logging short: ``_cut``."""
    target = spool.target_now(cfg.tracking_uri, cfg.experiment_name, cfg.run_name, how.child_of)
    try:
        with interrupts.cutting():
            still_down = preflight.probe_now(cfg, how.reprobe) if how.reprobe is not None else None
            if still_down:
                raise TrackingError(still_down)
            run_id = _log_now(cfg, w, m, how)
    except TrackingError as exc:  # the files are written: spool them for `llem-mlflow sync`
        if w.on_disk:
            message = spool.keep(w.folder, w.result.experiment_id, target, str(exc))
        else:
            message = f"{exc}\nNo file could be written either: the summary above is all that is left."
        return Outcome(result=w.result, result_dir=w.folder, run_id=None, tracking_error=message)
    except KeyboardInterrupt as stop:
        raise _cut(w, target, stop, how) from None
    return Outcome(result=w.result, result_dir=w.folder, run_id=run_id)


def _log_now(cfg: ExperimentConfig, w: _Written, m: measure.Measurement, how: _Logging) -> str:
    """Log the result folder, or, when no file could be written, the result from memory: both exactly once
    (``recording``'s protocol: under the result's lock, a run already holding it is kept, half-logged ones
    are retired)."""
    if w.on_disk:
        logged = recording.log_folder(
            w.folder, cfg.tracking_uri, cfg.experiment_name, cfg.run_name, (w.result, m.trace), how.child_of
        )
    else:
        logged = recording.log_from_memory(
            w.result, m.trace, w.folder, cfg.tracking_uri, cfg.experiment_name, cfg.run_name, how.child_of
        )
    return logged.run_id


def _cut(w: _Written, target: spool.Target, stop: KeyboardInterrupt, how: _Logging) -> _Cut:
    """Logging was cut short: spool the result first (a further signal waits for that), then end the
    half-logged run KILLED (a further signal exits at once; ``sync`` then retires the run)."""
    run_id = getattr(stop, "run_id", None)  # LoggingCut: the run it had made or resumed
    with contextlib.ExitStack() as stack:
        with interrupts.keeping():
            note = _spool_note(w, target, "MLflow logging was interrupted")
            stack.enter_context(interrupts.exit_line(_left_running(run_id, how, note)))
        if run_id is not None:  # a signal from here on exits at once with the line above
            ended = end_cut(stop)
            note = f"{_killed(run_id, how.mlflow_run) if ended else _left_running(run_id, how, '')}; {note}"
    return _Cut(note, Outcome(result=w.result, result_dir=w.folder, run_id=None, tracking_error=note))


def _left_running(run_id: str | None, how: _Logging, note: str) -> str:
    """What becomes of a half-logged run left RUNNING, then ``note`` (where the result is)."""
    if run_id is None:
        return note
    if run_id == how.mlflow_run:
        run = f"`mlflow run` marks run {run_id} FAILED when this process exits (sync logs into it)"
    else:
        run = f"MLflow run {run_id} left RUNNING (`llem-mlflow sync` retires it)"
    return f"{run}; {note}" if note else run


def _spool_note(w: _Written, target: spool.Target, reason: str) -> str:
    """Spool the written result for ``llem-mlflow sync``; one line saying where it went and the way back."""
    if not w.on_disk:
        return "no file could be written, so nothing was spooled"
    try:
        entry = spool.spool_result(w.folder, w.result.experiment_id, target, reason)
    except TrackingError as exc:
        first = str(exc).splitlines()[0]
        return f"{first}; log it later with: llem-mlflow log {w.folder}"
    return f"spooled in {entry}; upload it with: llem-mlflow sync"


def _killed(run_id: str, mlflow_run: str | None) -> str:
    """'MLflow run X ended KILLED'; for the run of ``mlflow run``, also what ``mlflow run`` makes of it."""
    if run_id != mlflow_run or mlflow_run_keeps_status():
        return f"MLflow run {run_id} ended KILLED"
    return (
        f"MLflow run {run_id} ended KILLED, but `mlflow run` marks it FAILED and exits 1 once this process "
        f"exits {interrupts.EXIT_CODE} (MLflow {mlflow_version()} overrides a KILLED status)"
    )


def _write_error(w: _Written, outcome: Outcome) -> str | None:
    """Why the result is not in its folder and what was kept where (None: it is)."""
    if w.problem is None:
        return None
    if w.on_disk:
        logged = f" and logged to MLflow run {outcome.run_id}" if outcome.run_id else ""
        return f"{w.problem}{logged}"
    if outcome.run_id:
        return (
            f"{w.problem}: MLflow run {outcome.run_id} holds the result, logged from memory (params, "
            "metrics, the power trace as metric history; result.json as an artifact if the temp folder "
            "had room)"
        )
    return f"{w.problem}: nothing could be kept on disk or in MLflow; the summary above is all that is left"
