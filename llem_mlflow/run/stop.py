"""How an interrupted run ends: what it keeps and the one line that says so.

A signal while measuring: ``_keep`` writes a result with ``status: interrupted`` from the completed
cycles and batches (or only the partial trace), ``_interrupted`` logs it (its MLflow run ends KILLED)
and raises ``RunInterrupted``. A signal after measuring, before logging: ``_stop_unlogged`` spools the
written result for ``llem-mlflow sync``. ``_stop`` raises with the message (also the process's last
words, ``interrupts.last_words``). Names with a leading underscore are the run package's own (used by
its modules), not public API.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import NoReturn

from llem_mlflow import interrupts
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import RunInterrupted
from llem_mlflow.measure import stages as measure
from llem_mlflow.measure.progress import Progress
from llem_mlflow.measure.timings import Stopwatch
from llem_mlflow.protocols import Backend
from llem_mlflow.run.derive import _build_result, _Context
from llem_mlflow.run.gpus import _with_gpu_warning
from llem_mlflow.run.publish import Outcome, _Cut, _killed, _Logging, _publish, _spool_note
from llem_mlflow.run.record import _keep_trace, _write, _Written
from llem_mlflow.tracking import spool


@dataclass(frozen=True)
class _Kept:
    """What an interrupted run wrote: its result (None: no measured batch completed) or a trace note."""

    stage: str
    partial: measure.Measurement | None
    written: _Written | None
    note: str = ""


def _keep(
    c: _Context, stop: measure.Interrupted, folder: Path, backend: Backend, show: Progress, clock: Stopwatch
) -> _Kept:
    """Write what an interrupted run measured: a result with ``status: interrupted`` and its files
    from the completed cycles and batches, or, when no measured batch completed, the partial trace."""
    if stop.partial is None:
        return _Kept(stop.stage, None, None, _keep_trace(stop.trace, folder))
    clock.laps.update(stop.partial.stage_s)
    partial = _with_gpu_warning(stop.partial, c.gpu_set)
    result = _build_result(c, partial, backend).model_copy(update={"status": "interrupted"})
    return _Kept(stop.stage, partial, _write(result, partial, folder, show, clock))


def _interrupted(
    cfg: ExperimentConfig, kept: _Kept, how: _Logging, show: Progress, clock: Stopwatch
) -> NoReturn:
    """Log what ``_keep`` wrote, then raise ``RunInterrupted`` saying what was kept.

    A result: its MLflow run ends KILLED (or is spooled). None: the partial trace alone, no MLflow run.
    """
    if kept.written is None or kept.partial is None:
        raise RunInterrupted(f"interrupted during {kept.stage}: no measured batch had completed; {kept.note}")
    cycles = kept.partial.cycles
    whole = sum(1 for cycle in cycles if cycle.cut is None)
    cut = cycles[-1].cut
    batches = f" and {cut.completed} of {cut.batches} batches of cycle {cycles[-1].index + 1}" if cut else ""
    what = f"interrupted during {kept.stage}: kept {whole} of {cfg.cycles} completed cycle(s){batches}"
    try:
        outcome = _publish(cfg, kept.written, kept.partial, how, show, clock)
    except _Cut as stop:
        _stop(f"{what} {_where(kept.written, 'logging was cut short')}: {stop}", stop.outcome)
    _stop(f"{what} {_where(kept.written, _logged_note(outcome, how))}", outcome)


def _stop(message: str, outcome: Outcome) -> NoReturn:
    """Raise ``RunInterrupted`` saying what was kept; a signal before the CLI prints it says it too."""
    interrupts.last_words(message)
    raise RunInterrupted(message, outcome)


def _where(w: _Written, note: str) -> str:
    """'in DIR (status: S; NOTE)': where the result files are, and ``note``."""
    place = f"in {w.folder}" if w.on_disk else "in memory only (no file could be written)"
    return f"{place} (status: {w.result.status}; {note})"


def _logged_note(outcome: Outcome, how: _Logging) -> str:
    """What logging did with an interrupted run's result, in a few words (see ``_killed``)."""
    if outcome.run_id:
        return _killed(outcome.run_id, how.mlflow_run)
    if outcome.tracking_error:
        return outcome.tracking_error.splitlines()[0]
    return "not logged (--no-mlflow)"


def _log_later(folder: Path) -> str:
    """The way back when the process exits before logging: the command that logs ``folder``."""
    return f"MLflow logging skipped; `llem-mlflow log {folder}` logs what was written there"


def _stop_unlogged(cfg: ExperimentConfig, w: _Written, how: _Logging, signal: str) -> NoReturn:
    """A signal came while the result was derived or written: stop (exit 130) without logging; the
    result is spooled for ``llem-mlflow sync`` (with ``mlflow: false``: only the files)."""
    done = f"interrupted ({signal}) while writing the result files: every cycle had completed; kept"
    outcome = Outcome(result=w.result, result_dir=w.folder, run_id=None)
    if not cfg.mlflow:
        _stop(f"{done} {_where(w, 'not logged: --no-mlflow')}", outcome)
    target = spool.target_now(cfg.tracking_uri, cfg.experiment_name, cfg.run_name, how.child_of)
    with interrupts.keeping():
        note = _spool_note(w, target, f"interrupted ({signal}) before logging")
    if how.mlflow_run:
        note = f"`mlflow run` marks its run {how.mlflow_run} FAILED once this process exits; {note}"
    message = f"{done} {_where(w, 'not logged to MLflow')}: {note}"
    _stop(message, replace(outcome, tracking_error=note))
