"""How runs end: the status a run holding a result ends with, the ``mlflow run`` run ended on a signal,
and a run a signal cut short while it was being logged (``LoggingCut``, ended by ``end_cut``).

All best effort: an interrupted process must not hang on a dead store.
"""

from __future__ import annotations

import os

from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.secrets import scrubbed_stdout
from llem_mlflow.tracking.store import open_client
from llem_mlflow.tracking.uris import target_tracking_uri

#: ``llem.status`` of a run whose logging a signal cut short: it never passes for a run holding the result.
CUT_STATUS = "logging interrupted"


def end_status(result: ExperimentResult) -> str:
    """How a run holding ``result`` ends: KILLED for an interrupted result, else FINISHED."""
    return "KILLED" if result.status == "interrupted" else "FINISHED"


def end_env_run(status: str) -> str | None:
    """End the run ``mlflow run`` made (``MLFLOW_RUN_ID``) with ``status``; its id, or None.

    Best effort (an interrupted run must not hang on a dead store): any failure is ignored.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    try:
        with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" here
            open_client(target_tracking_uri(None)).set_terminated(run_id, status=status)
    except Exception:
        return None
    return run_id


class LoggingCut(KeyboardInterrupt):
    """Ctrl-C/SIGTERM cut ``record_result`` short in run ``run_id`` (None: not ours to end, left as is)."""

    def __init__(self, run_id: str | None, uri: str) -> None:
        super().__init__(run_id)
        self.run_id = run_id
        self.uri = uri


def end_cut(cut: KeyboardInterrupt) -> bool:
    """End the run a cut left half-logged: KILLED, tagged ``llem.status = logging interrupted`` so that it
    never passes for the result (``claim_result`` retires it). Whether it was ended; best effort."""
    if not isinstance(cut, LoggingCut) or cut.run_id is None:
        return False
    try:
        client = open_client(cut.uri)
        with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" here
            client.set_tag(cut.run_id, "llem.status", CUT_STATUS)
            client.set_terminated(cut.run_id, status="KILLED")
    except Exception:
        return False
    return True


def mlflow_run_keeps_status() -> bool:
    """Whether ``mlflow run`` keeps the status its entry point gave its run when the entry point exits
    non-zero. MLflow 3.17 does not: ``_maybe_set_run_terminated`` tests the run's status string against
    ``RunStatus``'s int statuses, never finds it ended, and marks the run FAILED."""
    try:
        from mlflow.entities import RunStatus
    except ImportError:
        return False
    return bool(RunStatus.is_terminated("KILLED"))  # type: ignore[arg-type]  # what mlflow run passes
