"""MLflow logging of one ExperimentResult: store probe, run selection, params, tags, metrics, trace.

This is the only module that imports mlflow: lazily, inside functions, or in ``prefetch``'s background
thread while the model loads. Keys and value rounding come from ``ExperimentResult``'s
``mlflow_params``/``mlflow_tags``/``mlflow_metrics``; this module keeps no key list of its own.

Which run receives the result (one result per run: two measurements are never merged):
0. a parent is named (``ChildOf``, a sweep's point): a new run nested under it, ended FINISHED;
1. a fluent run is active (``mlflow.active_run()``) and holds no result yet (no ``llem.experiment_id``
   tag): log into it and leave it open; if it already holds one: a new run nested under it
   (tag ``mlflow.parentRunId``, as ``mlflow.start_run(nested=True)``), ended FINISHED;
2. ``MLFLOW_RUN_ID`` is set (inside ``mlflow run``): resume that run, end it FINISHED;
3. otherwise: a new run in ``resolve_experiment_name(experiment_name)``, ended FINISHED.
Every run is created through ``create_run_once`` (a run whose create reply was lost is found by its
``llem.create_token`` tag; duplicates a retried create made are retired), and ``claim_result`` finds
the run already holding a result and retires half-logged ones (``retire_run``): ``recording`` calls
both under its lock per result, so a result is held by one run.
Every run this module creates or resumes is ended FAILED when logging fails. Runs we own carry
the measurement's own times (``create_run(start_time=result.start_time)``,
``set_terminated(end_time=result.end_time)``).
A resumed run keeps the start time ``mlflow run`` gave it (MLflow has no API to change it), and
``mlflow run`` 3.17.2 re-terminates it once the entry point exits (``_maybe_set_run_terminated``
tests a string status against int statuses), so its end time is when the entry point exited.
The experiment we log into gets ``mlflow.experimentKind = custom_model_development`` when it has
no kind yet, so the MLflow 3.17 UI opens its runs table.

A dead store costs seconds, not minutes: ``store_probe.probe_store`` (re-exported here) checks it
first without MLflow, and MLflow's HTTP retries and SQL engine retries are bounded before a client is made.
A SQL store is made ready first (``ready_store``): created or migrated once, under a lock, whole (a sqlite
store is built beside the file and renamed into place), with signals deferred; a broken one is one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from llem_mlflow import interrupts
from llem_mlflow.config import DEFAULT_EXPERIMENT, MAX_RUN_NAME
from llem_mlflow.errors import TrackingError
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results.schema import ExperimentResult, mlflow_power_point
from llem_mlflow.secrets import scrub_secrets, scrubbed_stdout
from llem_mlflow.tracking import store_probe
from llem_mlflow.tracking.store_probe import DB_PORTS, probe_store
from llem_mlflow.tracking.store_probe import one_line as _one_line

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput, Metric, Param, Run, RunTag
    from mlflow.tracking import MlflowClient

    from llem_mlflow.run.track import Tracked

log = logging.getLogger(__name__)

PARAM_CONFLICT_PREFIX = "cfg."
LLEM_EXPERIMENT_TAG = "llem.experiment_id"
RETIRED_TAG = "llem.retired"  # why a run was retired (ended KILLED if RUNNING, soft-deleted): retire_run
CREATE_TOKEN_TAG = "llem.create_token"  # one per create_run call: finds the run a lost reply created
PARENT_RUN_TAG = "mlflow.parentRunId"  # what mlflow.start_run(nested=True) sets
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3.17 UI: "model training", the runs table
MLFLOW_DEFAULT_EXPERIMENT_ID = "0"
#: MLflow HTTP client settings applied (``os.environ.setdefault``) unless the user set them:
#: 2 retries with backoff 1 s give up on a dead server after ~3 s, not MLflow's ~4 min (7, 2 s, 120 s).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
#: Attempts of ``mlflow.store.db.utils.create_sqlalchemy_engine_with_retry`` (MLflow: 10, ~100 s of
#: backoff): a sqlite file opens or it does not; a database server gets two quick retries.
SQL_ENGINE_ATTEMPTS = {"sqlite": 1, "other": 3}
#: Loggers whose INFO lines ("Creating initial MLflow database tables", alembic's "Context impl
#: SQLiteImpl") are MLflow housekeeping, raised to WARNING unless MLFLOW_LOGGING_LEVEL is set.
_QUIET_LOGGERS = ("alembic", "mlflow.store.db.utils", "mlflow.store.db_migrations", "mlflow.store.tracking")
_GENERATED_NAME = re.compile(r"([a-z]+)-([a-z]+)-(\d{1,4})")
_T = TypeVar("_T")


@dataclass(frozen=True)
class LoggedRun:
    """The MLflow run holding a result; ``already_logged``: found in the store, nothing was logged."""

    run_id: str
    experiment_id: str
    tracking_uri: str  # without credentials
    already_logged: bool = False

    def __str__(self) -> str:
        return self.run_id


@dataclass(frozen=True)
class ChildOf:
    """Log into a new run nested under ``parent_run_id`` (its experiment), tagged with ``tags``."""

    parent_run_id: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Target:
    """The run to log into, and whether record_result owns (and so ends) it."""

    client: MlflowClient
    uri: str
    run_id: str
    experiment_id: str
    owned: bool


def mlflow_version() -> str | None:
    """Installed mlflow (or mlflow-skinny) version, without importing mlflow."""
    for dist in ("mlflow", "mlflow-skinny"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def resolve_tracking_uri(explicit: str | None) -> str:
    """``explicit``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if explicit:
        return explicit
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def target_tracking_uri(explicit: str | None) -> str:
    """The store a result will be logged to: an active fluent run's, else (inside ``mlflow run``,
    ``MLFLOW_RUN_ID`` set) ``MLFLOW_TRACKING_URI``, else ``resolve_tracking_uri(explicit)``.

    Imports mlflow only if it is already imported (no active run is possible otherwise).
    """
    if "mlflow" in sys.modules:
        import mlflow

        if mlflow.active_run() is not None:
            return str(mlflow.get_tracking_uri())
    if os.environ.get("MLFLOW_RUN_ID"):
        return os.environ.get("MLFLOW_TRACKING_URI") or resolve_tracking_uri(explicit)
    return resolve_tracking_uri(explicit)


#: Schemes every MLflow registers a tracking store for: answered without importing mlflow.
_BUILTIN_SCHEMES = frozenset(
    {"", "file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks"}
)


def unknown_scheme(uri: str) -> str | None:
    """None when an installed MLflow tracking store handles ``uri``'s scheme, else one line saying why not.

    A common scheme answers at once; any other is looked up in MLflow's own store registry (plugins'
    entry points included), which imports mlflow. A registry that cannot be asked lets the URI pass.
    """
    if urlsplit(uri).scheme.lower() in _BUILTIN_SCHEMES:
        return None
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry
    except ImportError:
        return None
    try:
        registry.get_store_builder(uri)  # type: ignore[no-untyped-call]
    except Exception:
        known = ", ".join(sorted(s for s in getattr(registry, "_registry", {}) if s))
        scheme = urlsplit(uri).scheme or uri.split(":", 1)[0]
        return f"no installed MLflow tracking store handles the scheme {scheme!r} (known: {known})"
    return None


def resolve_experiment_name(explicit: str | None) -> str:
    """``explicit``, else ``MLFLOW_EXPERIMENT_NAME``, else ``"llem-mlflow"``."""
    return explicit or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def default_run_name(result: ExperimentResult) -> str:
    """``<model tail>-bs<batch size>-<precision>``, e.g. ``gpt2-bs8-bf16`` for ``openai/gpt2``.

    A long model folder name is cut so the whole fits ``MAX_RUN_NAME`` (what MLflow's SQL stores hold).
    """
    model_tail = result.model.rstrip("/").rsplit("/", 1)[-1] or result.model
    batch_size = result.resolved.batch_size if result.resolved is not None else result.config.batch_size
    suffix = f"-bs{batch_size}-{result.precision}"
    return model_tail[: MAX_RUN_NAME - len(suffix)] + suffix


def scrub_uri(uri: str) -> str:
    """The URI (or any text holding URIs) without credentials; see ``secrets.scrub_secrets``."""
    return scrub_secrets(uri)


#: How long ``Prefetch.wait`` waits for the background import before measuring goes ahead anyway.
PREFETCH_WAIT_S = 60.0


class Prefetch:
    """MLflow (and, for SQL stores, its SQLAlchemy store) imported in a daemon thread.

    Started after the checks, so the ~3-5 s import overlaps the model load (which waits on the disk
    and the GPU) instead of following the measurement; ``wait`` before measuring keeps it out of the
    measured windows. An import that fails here is left for the logging step, which imports again
    and reports the error itself. A SQL store is then made ready (``ready_store``: created or migrated
    whole, once, under a lock), so it is ready before measuring and runs starting together on a new
    store take turns; a store found broken is a warning here and the logging step's error.
    """

    def __init__(self, tracking_uri: str | None) -> None:
        modules = ["mlflow", "mlflow.tracking"]
        if _is_sql(target_tracking_uri(tracking_uri)):
            modules.append("mlflow.store.tracking.sqlalchemy_store")  # sqlalchemy, alembic: ~1-4 s more
        uri = target_tracking_uri(tracking_uri)
        args = (modules, uri)
        self._thread = threading.Thread(target=_import_and_ready, args=args, name="llem-import", daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float = PREFETCH_WAIT_S) -> bool:
        """Wait for the import to end (at most ``timeout_s``); False when it is still running."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()


def prefetch(tracking_uri: str | None) -> Prefetch:
    """Start importing what logging to ``tracking_uri`` needs, in the background (see ``Prefetch``)."""
    return Prefetch(tracking_uri)


def _import_and_ready(modules: Sequence[str], uri: str) -> None:
    _import_all(modules)
    if not _is_sql(uri) or "mlflow.store.tracking.sqlalchemy_store" not in sys.modules:
        return
    if probe_store(uri) is not None:
        return  # the checks warned already; the logging step reports it
    try:
        ready_store(uri)
    except TrackingError as exc:
        log.warning("%s; measuring anyway, the result files are kept (and spooled if logging fails)", exc)
    except Exception as exc:  # the logging step opens the store again and reports it
        log.debug("making the store ready failed: %s", exc)


def _import_all(modules: Sequence[str]) -> None:
    _yield_cpu()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # the logging step imports again and reports it
            log.debug("background import of %s failed: %s", name, exc)
            return


def _yield_cpu() -> None:
    """Linux: nice this thread alone to 19, so the import takes only CPU time the model load leaves idle.

    (On a 2-core machine a CPU-bound load otherwise shares its cores with the import.)
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


# --- sweeps: a parent run per sweep, a nested child run per point ---------------------------------

SWEEP_ID_TAG = "llem.sweep.id"  # hash of the sweep's base config and points: finds the parent again
SWEEP_FIELDS_TAG = "llem.sweep.fields"
SWEEP_POINT_TAG = "llem.sweep.point"  # a child's overrides, compact JSON
SWEEP_POINT_HASH_TAG = "llem.sweep.point_hash"  # hash of a child's full requested config
SWEEP_SUPERSEDED_TAG = "llem.sweep.superseded_by"  # a retired parent: the run its points moved to


@dataclass(frozen=True)
class DonePoint:
    """A FINISHED child run of a sweep parent: its id, summary metrics and ``llem.config_hash``; when it
    ended (epoch ms) and its ``llem.experiment_id`` (the name of its result folder)."""

    run_id: str
    metrics: Mapping[str, float]
    config_hash: str | None
    end_time_ms: int | None = None
    experiment_id: str | None = None


@dataclass(frozen=True)
class SweepParent:
    """A sweep's parent run; ``done``: its FINISHED children by ``llem.sweep.point_hash``."""

    run_id: str
    experiment_id: str
    tracking_uri: str  # without credentials
    done: Mapping[str, DonePoint]
    resumed: bool


def open_sweep_parent(
    sweep_id: str,
    run_name: str,
    tags: Mapping[str, str],
    *,
    tracking_uri: str | None,
    experiment_name: str | None,
) -> SweepParent:
    """The sweep's parent run, RUNNING: found again by ``llem.sweep.id = sweep_id``, else created.

    Inside ``mlflow run`` (``MLFLOW_RUN_ID``) that run is the parent, and a rerun resumes as the CLI
    does: the finished points of earlier parents of the same sweep move under it and those parents are
    retired (``_take_over_earlier``). With an active fluent run the
    parent is looked up in its experiment and a new one is nested under it; otherwise in
    ``resolve_experiment_name(experiment_name)``.

    Raises:
        TrackingError: one line; the store is unreachable or the parent cannot be made.
    """
    uri = target_tracking_uri(tracking_uri)
    client = _client(uri)
    import mlflow

    active = mlflow.active_run()
    env_run_id = os.environ.pop("MLFLOW_RUN_ID", None)

    def parent() -> tuple[Run, bool]:
        if env_run_id:
            adopted = _adopt_parent(client, env_run_id, run_name, tags)
            return adopted, _take_over_earlier(client, adopted, sweep_id)
        exp_id = (
            active.info.experiment_id
            if active
            else _experiment_named(client, resolve_experiment_name(experiment_name))
        )
        found = _find_parent(client, exp_id, sweep_id)
        if found is not None:
            client.update_run(found.info.run_id, status="RUNNING")
            return found, True
        nest = {PARENT_RUN_TAG: active.info.run_id} if active else {}
        made = create_run_once(client, exp_id, run_name=run_name, tags={**_context_tags(), **tags, **nest})
        return made, False

    run, resumed = _guarded(uri, "open the sweep's parent run", parent)
    done = _guarded(uri, "list the sweep's finished points", lambda: _finished_children(client, run))
    return SweepParent(run.info.run_id, run.info.experiment_id, scrub_uri(uri), done, resumed)


def close_sweep_parent(
    parent: SweepParent,
    tags: Mapping[str, str],
    files: Sequence[Path],
    *,
    tracking_uri: str | None,
    failed: bool,
) -> None:
    """Tag the parent, log ``files`` at its artifact root and end it FINISHED (FAILED: ``failed``)."""
    uri = target_tracking_uri(tracking_uri)
    client = _client(uri)

    def close() -> None:
        client.log_batch(parent.run_id, tags=_tags(dict(tags)))
        for path in files:
            client.log_artifact(parent.run_id, str(path))
        client.set_terminated(parent.run_id, status="FAILED" if failed else "FINISHED")

    _guarded(uri, f"close the sweep's parent run {parent.run_id}", close)


def _context_tags() -> dict[str, str]:
    from mlflow.tracking.context.registry import resolve_tags

    return dict(resolve_tags())


def _adopt_parent(client: MlflowClient, run_id: str, run_name: str, tags: Mapping[str, str]) -> Run:
    """The ``mlflow run`` run as the parent: RUNNING, tagged, named unless ``--run-name`` named it."""
    run = client.get_run(run_id)
    name = run_name if _is_generated_name(run.info.run_name or "") else None
    client.update_run(run_id, status="RUNNING", name=name)
    client.log_batch(run_id, tags=_tags(dict(tags)))
    _ensure_kind(client, run.info.experiment_id)
    return client.get_run(run_id)


def _take_over_earlier(client: MlflowClient, parent: Run, sweep_id: str) -> bool:
    """Resume a sweep under a new ``mlflow run`` run: move the finished points of earlier parents
    (same ``llem.sweep.id``, same experiment) under ``parent`` and retire those parents.

    A retired parent is tagged ``llem.sweep.superseded_by`` = ``parent``'s id, so a point spooled for it
    is logged under ``parent`` (``_new_child``). Returns whether an earlier parent was found.
    """
    run_id = parent.info.run_id
    found = _find_parents(client, parent.info.experiment_id, sweep_id)
    earlier = [r for r in found if r.info.run_id != run_id]
    for old in earlier:
        for child in _finished_children(client, old).values():
            client.set_tag(child.run_id, PARENT_RUN_TAG, run_id)
        client.set_tag(old.info.run_id, SWEEP_SUPERSEDED_TAG, run_id)
        retire_run(client, old, f"superseded by run {run_id}: the sweep resumed there under `mlflow run`")
    return bool(earlier)


def _find_parents(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[Run]:
    from mlflow.entities import ViewType

    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=100,
        )
    )


def _find_parent(client: MlflowClient, experiment_id: str, sweep_id: str) -> Run | None:
    from mlflow.entities import ViewType

    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def _finished_children(client: MlflowClient, parent: Run) -> dict[str, DonePoint]:
    from mlflow.entities import ViewType

    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent.info.run_id}' and attributes.status = 'FINISHED'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=10_000,
        order_by=["attributes.start_time ASC"],
    )
    done: dict[str, DonePoint] = {}
    for run in runs:
        key = run.data.tags.get(SWEEP_POINT_HASH_TAG)
        if key and LLEM_EXPERIMENT_TAG in run.data.tags:
            done[key] = DonePoint(
                run.info.run_id,
                dict(run.data.metrics),
                run.data.tags.get("llem.config_hash"),
                run.info.end_time,
                run.data.tags.get(LLEM_EXPERIMENT_TAG),
            )
    return done


# --- logging -----------------------------------------------------------------------------------


def record_result(
    result: ExperimentResult,
    files: Sequence[Path],
    trace: PowerTrace,
    *,
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
    child_of: ChildOf | None = None,
) -> LoggedRun:
    """Log ``result``, its power ``trace`` and ``files`` (at the artifact root) to MLflow.

    ``run_name`` defaults to ``default_run_name(result)`` for a new run; a run ``mlflow run`` made
    gets it only if MLflow gave that run a random name (no ``--run-name``). ``child_of``: log into a
    new run nested under that parent (see the module docstring for how the run is chosen otherwise).

    Raises:
        TrackingError: one line; the store is unreachable, the run cannot be created or resumed,
            or logging failed (a run this call created or resumed is then marked FAILED).
    """
    target = _select_run(result, tracking_uri, experiment_name, run_name, child_of)
    end_ms = _epoch_ms(result.end_time)
    try:
        _log_everything(target, result, files, trace)
    except KeyboardInterrupt:  # Ctrl-C/SIGTERM: the caller spools the result, then ends the run (end_cut)
        raise LoggingCut(target.run_id if target.owned else None, target.uri) from None
    except Exception as exc:
        if target.owned:
            _end_quietly(target, "FAILED", end_ms)
        raise TrackingError(
            f"logging to MLflow run {target.run_id} at {scrub_uri(target.uri)} failed: "
            f"{_one_line(str(exc))}. "
            + ("The run was marked FAILED. " if target.owned else "Your active run was left open. ")
            + "Check the tracking server and the result files, then log again."
        ) from None  # the cause's text (scrubbed above) may hold credentials
    if target.owned:
        final = end_status(result)
        _guarded(target.uri, f"mark run {target.run_id} {final}", lambda: _end(target, final, end_ms))
    return LoggedRun(target.run_id, target.experiment_id, scrub_uri(target.uri))


def end_env_run(status: str) -> str | None:
    """End the run ``mlflow run`` made (``MLFLOW_RUN_ID``) with ``status``; its id, or None.

    Best effort (an interrupted run must not hang on a dead store): any failure is ignored.
    """
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    try:
        with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" here
            _client(target_tracking_uri(None)).set_terminated(run_id, status=status)
    except Exception:
        return None
    return run_id


def end_status(result: ExperimentResult) -> str:
    """How a run holding ``result`` ends: KILLED for an interrupted result, else FINISHED."""
    return "KILLED" if result.status == "interrupted" else "FINISHED"


# --- a signal during logging (runner: interrupts.cutting), a result logged from memory ---------

#: ``llem.status`` of a run whose logging a signal cut short: it never passes for a run holding the result.
CUT_STATUS = "logging interrupted"


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
        client = _client(cut.uri)
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


def log_text_quietly(tracking_uri: str | None, run_id: str, name: str, text: str) -> bool:
    """Log ``text`` as artifact ``name`` of run ``run_id``; whether it was. A failure only warns (MLflow
    writes it to a temp file first, and a full disk may have no room for that)."""
    uri = target_tracking_uri(tracking_uri)
    try:
        _client(uri).log_text(run_id, text, name)
    except Exception as exc:
        log.warning("%s not logged to MLflow run %s: %s", name, run_id, _one_line(scrub_secrets(str(exc))))
        return False
    return True


@dataclass(frozen=True)
class Claim:
    """What ``claim_result`` found: the run holding the result (None: none yet), the runs it retired."""

    logged: LoggedRun | None
    retired: Sequence[str] = ()


def claim_result(
    llem_experiment_id: str,
    *,
    tracking_uri: str | None,
    run_id_hint: str | None = None,
    keep: Sequence[str] = (),
) -> Claim:
    """The run in the target store already holding the result, after retiring half-logged ones.

    A run holds the result when it is FINISHED (KILLED for an interrupted result), active and tagged
    ``llem.experiment_id = llem_experiment_id``; ``run_id_hint`` (the folder's ``mlflow_run.json``) is
    preferred among several. Every other active run with that tag, except those in ``keep`` (the ``mlflow
    run`` run, an active fluent run), is an earlier try that broke half-way: it is retired (``retire_run``).
    Call it under ``recording.result_lock``: a run another process is logging right now looks half-logged.

    Raises:
        TrackingError: one line; the store is unreachable, or the search or a retirement failed.
    """
    uri = target_tracking_uri(tracking_uri)
    client = _client(uri)
    return _guarded(
        uri,
        f"look for a run already holding {llem_experiment_id}",
        lambda: _claim(client, uri, llem_experiment_id, run_id_hint, set(keep)),
    )


def _claim(client: MlflowClient, uri: str, llem_id: str, hint: str | None, keep: set[str]) -> Claim:
    tagged = _search_tagged(client, llem_id)
    hinted = _run_or_none(client, hint) if hint and hint not in {r.info.run_id for r in tagged} else None
    runs = ([hinted] if hinted is not None else []) + tagged
    holding = [r for r in runs if _holds(r, llem_id)]
    holding.sort(key=lambda r: r.info.run_id != hint)  # the recorded run first, then newest first
    partial = [r for r in tagged if not _holds(r, llem_id) and r.info.run_id not in keep]
    for run in partial:
        retire_run(client, run, "an earlier try at logging this result that did not finish")
    logged = _logged(holding[0], uri) if holding else None
    return Claim(logged, [r.info.run_id for r in partial])


def retire_run(client: MlflowClient, run: Run, why: str) -> None:
    """Retire ``run``: tag ``llem.retired`` = ``why``, end it KILLED if still RUNNING, soft-delete it.

    It stays restorable (``mlflow runs restore --run-id``) until ``mlflow gc`` removes it.
    """
    run_id = run.info.run_id
    client.set_tag(run_id, RETIRED_TAG, why[:5000])
    if run.info.status in ("RUNNING", "SCHEDULED"):
        with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" here
            client.set_terminated(run_id, status="KILLED")
    client.delete_run(run_id)


def active_run_id() -> str | None:
    """The id of MLflow's active fluent run; None when there is none (or mlflow is not imported)."""
    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None else None
    return None if run is None else str(run.info.run_id)


def _holds(run: Run, llem_id: str) -> bool:
    """Whether ``run`` is a FINISHED, active run tagged with the llem experiment id."""
    info = run.info
    interrupted = info.status == "KILLED" and run.data.tags.get("llem.status") == "interrupted"
    return (
        (info.status == "FINISHED" or interrupted)
        and info.lifecycle_stage == "active"
        and run.data.tags.get(LLEM_EXPERIMENT_TAG) == llem_id
    )


def _logged(run: Run, uri: str) -> LoggedRun:
    return LoggedRun(run.info.run_id, run.info.experiment_id, scrub_uri(uri), already_logged=True)


def _run_or_none(client: MlflowClient, run_id: str) -> Run | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None  # recorded against another store, or deleted for good
        raise


def _search_tagged(client: MlflowClient, llem_id: str) -> list[Run]:
    from mlflow.entities import ViewType

    experiment_ids = _active_experiment_ids(client)
    if not experiment_ids:
        return []
    return list(
        client.search_runs(
            experiment_ids,
            filter_string=f"tags.`{LLEM_EXPERIMENT_TAG}` = '{llem_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=20,
            order_by=["attributes.start_time DESC"],
        )
    )


def _active_experiment_ids(client: MlflowClient) -> list[str]:
    from mlflow.entities import ViewType

    ids: list[str] = []
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def _select_run(
    result: ExperimentResult,
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
    child_of: ChildOf | None = None,
) -> _Target:
    uri = target_tracking_uri(tracking_uri)
    client = _client(uri)  # probes before mlflow is imported: a dead store fails at once
    import mlflow

    if child_of is not None:
        return _child_target(client, uri, child_of, result, run_name)
    active = mlflow.active_run()
    if active is not None:
        return _active_target(client, uri, active.info.run_id, result, run_name)
    env_run_id = os.environ.pop("MLFLOW_RUN_ID", None)  # like mlflow.start_run(): consume it once
    if env_run_id:
        what = f"resume run {env_run_id} from MLFLOW_RUN_ID"
        exp_id = _guarded(uri, what, lambda: _resume(client, env_run_id, result, run_name))
        return _Target(client, uri, env_run_id, exp_id, owned=True)
    name = resolve_experiment_name(experiment_name)
    new_run = _guarded(
        uri, f"create a run in experiment {name!r}", lambda: _new_run(client, name, result, run_name)
    )
    return _Target(client, uri, new_run.info.run_id, new_run.info.experiment_id, owned=True)


def _active_target(
    client: MlflowClient, uri: str, run_id: str, result: ExperimentResult, run_name: str | None
) -> _Target:
    """The active run while it holds no result; once it holds one, a new run nested under it."""
    run = _guarded(uri, f"read the active run {run_id}", lambda: client.get_run(run_id))
    if LLEM_EXPERIMENT_TAG in run.data.tags:
        return _child_target(client, uri, ChildOf(run_id), result, run_name)
    exp_id = run.info.experiment_id
    _guarded(uri, "tag the active run's experiment", lambda: _ensure_kind(client, exp_id))
    return _Target(client, uri, run_id, exp_id, owned=False)


def _child_target(
    client: MlflowClient, uri: str, child_of: ChildOf, result: ExperimentResult, run_name: str | None
) -> _Target:
    """A new run in the parent's experiment, tagged ``mlflow.parentRunId`` (owned: ended here)."""
    what = f"create a run nested under run {child_of.parent_run_id}"
    child = _guarded(uri, what, lambda: _new_child(client, child_of, result, run_name))
    return _Target(client, uri, child.info.run_id, child.info.experiment_id, owned=True)


def _new_child(
    client: MlflowClient, child_of: ChildOf, result: ExperimentResult, run_name: str | None
) -> Run:
    from mlflow.tracking.context.registry import resolve_tags

    parent = _live_parent(client, child_of.parent_run_id)
    experiment_id = parent.info.experiment_id
    _ensure_kind(client, experiment_id)
    tags = {
        **resolve_tags(),
        **child_of.tags,
        PARENT_RUN_TAG: parent.info.run_id,
        LLEM_EXPERIMENT_TAG: result.experiment_id,  # a half-logged run can be found (and retired) again
    }
    return create_run_once(
        client,
        experiment_id,
        start_time=_epoch_ms(result.start_time),
        run_name=run_name or default_run_name(result),
        tags=tags,
    )


def create_run_once(
    client: MlflowClient, experiment_id: str, *, tags: Mapping[str, str], **kwargs: object
) -> Run:
    """``client.create_run`` that yields exactly one run, however its replies go.

    The run is tagged with a fresh ``llem.create_token``. MLflow's HTTP client retries a request whose
    reply was slower than ``MLFLOW_HTTP_REQUEST_TIMEOUT``, and every try creates a run: the runs holding
    the token other than the one returned are retired. A create that failed is looked up by its token
    before it counts as failed (the server may have made the run and lost only the reply).
    """
    token = uuid.uuid4().hex
    tagged = {**tags, CREATE_TOKEN_TAG: token}
    try:
        run = client.create_run(experiment_id, tags=tagged, **kwargs)  # type: ignore[arg-type]
    except Exception:
        made = _made_with(client, experiment_id, token)
        if not made:
            raise
        run = made[0]
    for extra in _made_with(client, experiment_id, token):
        if extra.info.run_id != run.info.run_id:
            why = f"a duplicate of run {run.info.run_id} made by a retried create request"
            retire_run(client, extra, why)
    return run


def _made_with(client: MlflowClient, experiment_id: str, token: str) -> list[Run]:
    """Runs of the experiment tagged with ``token``, oldest first."""
    from mlflow.entities import ViewType

    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{CREATE_TOKEN_TAG}` = '{token}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=50,
            order_by=["attributes.start_time ASC"],
        )
    )


def _live_parent(client: MlflowClient, run_id: str) -> Run:
    """The run ``run_id``, or the run it was superseded by (a sweep resumed under ``mlflow run``)."""
    run = client.get_run(run_id)
    for _ in range(100):  # a chain of resumed sweeps; never a loop
        successor = run.data.tags.get(SWEEP_SUPERSEDED_TAG)
        if not successor:
            break
        run = client.get_run(successor)
    return run


def _create_experiment(client: MlflowClient, name: str) -> str | None:
    """Create experiment ``name``; None when it already exists (several clients starting at once race)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            return None
        raise


def _client(uri: str) -> MlflowClient:
    """An MlflowClient for ``uri``: the probe passed, MLflow's retries bounded, the store ready."""
    problem = probe_store(uri)
    if problem is not None:
        raise TrackingError(problem)
    _prepare_mlflow(uri)
    ready_store(uri)
    from mlflow.tracking import MlflowClient

    return _guarded(uri, "open the store", lambda: MlflowClient(tracking_uri=uri))


# --- a SQL store is created or migrated whole, once, and never while a signal can cut it ---------------

_READY: set[str] = set()  # URIs made ready in this process (MLflow caches their stores too)


def _is_sql(uri: str) -> bool:
    scheme = urlsplit(uri).scheme.lower().split("+")[0]
    return scheme == "sqlite" or scheme in DB_PORTS


def ready_store(uri: str) -> None:
    """Make the SQL store at ``uri`` ready to use: created or migrated whole, once per process.

    MLflow creates and migrates a store on first use, in place and not atomically: a signal, a kill or
    a second process starting at the same time leaves it half made and unusable for good. Here a sqlite
    file is only ever created or migrated holding ``store_probe.store_lock`` (other processes wait, then
    find it ready), built beside the file and renamed into place whole (a kill leaves no store, never
    half of one), with SIGINT/SIGTERM deferred (``interrupts.deferred``). Other SQL stores are opened
    under a lock file in the temp folder (this host only) with signals deferred: best effort.
    Other schemes: nothing to do.

    Raises:
        TrackingError: one line; the store is half made, of an older or newer MLflow, or cannot be opened.
    """
    if uri in _READY or not _is_sql(uri):
        return
    _prepare_mlflow(uri)
    path = store_probe.sqlite_file(uri)
    lock_path = path if path is not None else _host_lock_path(uri)
    with store_probe.store_lock(lock_path):
        if path is not None:
            _ready_sqlite(uri, path)
        with interrupts.deferred():  # MLflow's own open may create its Default experiment, or migrate
            _guarded(uri, "open the store", lambda: _open_store(uri))
    _READY.add(uri)


def _open_store(uri: str) -> None:
    """Build (and so cache) MLflow's store for ``uri``; an out-of-date schema is one line saying so."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:
        if "out-of-date database schema" not in str(exc):
            raise
        raise TrackingError(
            f"MLflow tracking store {scrub_uri(uri)} has an older schema than this MLflow needs: back it up, "
            f"then run mlflow db upgrade {scrub_uri(uri)}"
        ) from None


def _db_utils() -> Any:
    """``mlflow.store.db.utils`` (untyped): its engine, schema revision and table-creation helpers."""
    return importlib.import_module("mlflow.store.db.utils")


def _host_lock_path(uri: str) -> Path:
    import tempfile

    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"llem-store-{digest}"


def _ready_sqlite(uri: str, path: Path) -> None:
    """Holding the store's lock: build a missing or empty store, migrate an older one, refuse a broken one."""
    store_probe.remove_stale_builds(path)
    schema = store_probe.read_schema(path) if path.exists() else None
    if schema is None and path.exists() and path.stat().st_size:
        return  # unreadable now: MLflow's own open reports it
    if schema is None or not schema.tables:
        _guarded(uri, "create the store", lambda: _build_store(path, source=None))
        return
    if schema.half_made():
        raise TrackingError(f"MLflow tracking store {scrub_uri(uri)} {store_probe.half_created(path)}")
    db_utils = _db_utils()

    head = str(db_utils._get_latest_schema_revision())
    if schema.revision == head:
        return
    problem = _schema_problem(uri, schema, head)
    if problem is not None:
        raise TrackingError(f"MLflow tracking store {scrub_uri(uri)} {problem}")
    try:
        _build_store(path, source=path)
    except Exception as exc:
        problem = _unmigrated(uri, path, schema, exc)
        raise TrackingError(f"MLflow tracking store {scrub_uri(uri)} {problem}") from None


def _schema_problem(uri: str, schema: store_probe.SqliteSchema, head: str) -> str | None:
    """Why a store at another revision than ``head`` is not migrated here (None: migrate a copy of it)."""
    if schema.revision is None:
        return None  # tables without a revision: a creation cut before its first step ended; try to go on
    if schema.revision not in _known_revisions(uri):
        return store_probe.newer_schema(schema.revision)
    if schema.experiments and _all_tables_exist(uri):  # MLflow refuses it too ("out-of-date schema")
        return store_probe.older_schema(uri, schema.revision, head)
    return None  # MLflow would migrate it in place on first use; here a copy is, then renamed into place


def _unmigrated(uri: str, path: Path, schema: store_probe.SqliteSchema, exc: BaseException) -> str:
    """Why migrating a copy failed; the store is left as it was."""
    if schema.revision is None or not schema.experiments:  # MLflow makes its Default experiment last
        return store_probe.half_created(path)
    return (
        f"could not be migrated to this MLflow's schema ({_one_line(str(exc))}); it is left as it was: "
        f"back it up and run mlflow db upgrade {scrub_uri(uri)}"
    )


def _known_revisions(uri: str) -> set[str]:
    from alembic.script import ScriptDirectory

    db_utils = _db_utils()

    script = ScriptDirectory.from_config(db_utils._get_alembic_config(uri))
    return {str(rev.revision) for rev in script.walk_revisions()}


def _all_tables_exist(uri: str) -> bool:
    db_utils = _db_utils()

    engine = db_utils.create_sqlalchemy_engine(uri)
    try:
        return bool(db_utils._all_tables_exist(engine))
    finally:
        engine.dispose()


def _build_store(path: Path, source: Path | None) -> None:
    """Build MLflow's schema beside ``path`` (on a copy of ``source`` when given), then rename it onto
    ``path`` whole. Signals wait meanwhile; other writers of ``source`` wait too, so none is lost."""
    built = store_probe.build_path(path)
    copied = store_probe.copied(source, built) if source is not None else contextlib.nullcontext()
    try:
        with interrupts.deferred(), copied:
            engine = _db_utils().create_sqlalchemy_engine(f"sqlite:///{built}")
            try:
                _db_utils()._initialize_tables(engine)  # what MLflow runs on a new or older store
            finally:
                engine.dispose()
            store_probe.put_in_place(built, path)
    finally:
        with contextlib.suppress(OSError):
            built.unlink()


def _prepare_mlflow(uri: str) -> None:
    """Bounded HTTP retries (unless set by the user), bounded SQL engine retries, quiet housekeeping."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import mlflow  # noqa: F401 - configures MLflow's loggers, which _quiet_mlflow_loggers then adjusts

    _quiet_mlflow_loggers()
    scheme = urlsplit(uri).scheme.lower().split("+")[0]
    if scheme == "sqlite" or scheme in DB_PORTS:
        _bound_engine_retries(SQL_ENGINE_ATTEMPTS["sqlite" if scheme == "sqlite" else "other"])


def _quiet_mlflow_loggers() -> None:
    if os.environ.get("MLFLOW_LOGGING_LEVEL"):
        return  # the user chose MLflow's verbosity
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


def _bound_engine_retries(attempts: int) -> None:
    try:
        from mlflow.store.db import utils as db_utils
    except ImportError:
        return  # mlflow-skinny: no SQL stores at all
    if hasattr(db_utils, "MAX_RETRY_COUNT"):
        db_utils.MAX_RETRY_COUNT = attempts


def _resume(client: MlflowClient, run_id: str, result: ExperimentResult, run_name: str | None) -> str:
    run = client.get_run(run_id)  # fails clearly if the run does not exist in this store
    generated = _is_generated_name(run.info.run_name or "")
    name = (run_name or default_run_name(result)) if generated else None  # None: keep the name
    client.update_run(run_id, status="RUNNING", name=name)
    experiment_id = str(run.info.experiment_id)
    if experiment_id == MLFLOW_DEFAULT_EXPERIMENT_ID:
        log.warning(
            "this `mlflow run` run is in MLflow's Default experiment; keep llem runs together with: "
            "mlflow run . --experiment-name %s",
            DEFAULT_EXPERIMENT,
        )
    _ensure_kind(client, experiment_id)
    return experiment_id


def _is_generated_name(name: str) -> bool:
    """Whether ``name`` looks like MLflow's random run name (``<predicate>-<noun>-<0..1000>``).

    ``mlflow run`` sets the ``--run-name`` tag right after starting the entry point, long before
    llem logs; without it the run keeps the name the store generated.
    """
    match = _GENERATED_NAME.fullmatch(name)
    if match is None:
        return False
    from mlflow.utils import name_utils

    predicates = getattr(name_utils, "_GENERATOR_PREDICATES", None)
    nouns = getattr(name_utils, "_GENERATOR_NOUNS", None)
    if predicates is None or nouns is None:
        return True  # word lists moved: the shape alone decides
    return match[1] in {p.lower() for p in predicates} and match[2] in {n.lower() for n in nouns}


def _new_run(
    client: MlflowClient, experiment_name: str, result: ExperimentResult, run_name: str | None
) -> Run:
    from mlflow.tracking.context.registry import resolve_tags

    return create_run_once(
        client,
        _experiment_named(client, experiment_name),
        start_time=_epoch_ms(result.start_time),
        run_name=run_name or default_run_name(result),
        tags={**resolve_tags(), LLEM_EXPERIMENT_TAG: result.experiment_id},
    )


def _experiment_named(client: MlflowClient, experiment_name: str) -> str:
    """The id of the active experiment ``experiment_name``, created (and kind-tagged) when missing."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        created = _create_experiment(client, experiment_name)
        if created is not None:
            return created
        experiment = client.get_experiment_by_name(experiment_name)  # another client created it just now
        if experiment is None:
            raise TrackingError(f"MLflow experiment {experiment_name!r} could be neither created nor found")
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {experiment_name!r} is deleted; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or pick another name"
        )
    _ensure_kind(client, experiment.experiment_id, experiment.tags)
    return str(experiment.experiment_id)


def _ensure_kind(client: MlflowClient, experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Tag the experiment ``custom_model_development`` if it has no kind; never overwrite one."""
    if tags is None:
        tags = client.get_experiment(experiment_id).tags
    if EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def _guarded(uri: str, what: str, action: Callable[[], _T]) -> _T:
    """Run ``action``; turn any failure into a one-line TrackingError naming the (scrubbed) URI."""
    try:
        with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" when a run ends
            return action()
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(
            f"could not {what} at MLflow tracking URI {scrub_uri(uri)}: {_one_line(str(exc))}. "
            "Check that the URI is right and the tracking server is reachable."
        ) from None  # the cause's text (scrubbed above) may hold credentials


def _log_everything(
    target: _Target, result: ExperimentResult, files: Sequence[Path], trace: PowerTrace
) -> None:
    client, run_id = target.client, target.run_id
    existing = client.get_run(run_id).data.params
    client.log_batch(
        run_id,
        metrics=_summary_metrics(result)
        + _cycle_metrics(result)
        + _trace_metrics(trace, _trace_origin_ms(result, trace)),
        params=_params(result.mlflow_params(), existing),
        tags=_tags(result.mlflow_tags()),
    )
    _log_dataset(client, run_id, _prompt_dataset(result))
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"artifact file {path} does not exist")
        client.log_artifact(run_id, str(path))


def _log_dataset(client: MlflowClient, run_id: str, dataset: DatasetInput) -> None:
    """Log the dataset input; once more after a failure.

    MLflow's SQL store looks the dataset up, then inserts it: two clients logging the same new dataset
    at once (a sweep over two GPUs) race, and the loser fails on the unique key; its second try finds
    the dataset the winner inserted (2 spawned processes x 20 new datasets on sqlite: 12 collisions).
    """
    try:
        client.log_inputs(run_id, datasets=[dataset])
    except Exception:
        client.log_inputs(run_id, datasets=[dataset])


def _prompt_dataset(result: ExperimentResult) -> DatasetInput:
    """The prompt set as an MLflow dataset input (name, digest, source), context ``measurement``.

    A .jsonl file: its name, the first 16 hex digits of its SHA-256 (``resolved.dataset``), source = the
    path as configured. Synthetic prompts: ``synthetic``, digested from what decides them (seed, n, length).
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    cfg = result.config
    if cfg.dataset == "synthetic" or result.resolved is None:
        spec = f"synthetic seed={cfg.seed} n={cfg.n} max_input_tokens={cfg.max_input_tokens}"
        digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
        dataset = Dataset(name="synthetic", digest=digest, source_type="code", source=spec)
    else:
        digest = result.resolved.dataset.split(":")[-1][:16]
        dataset = Dataset(name=Path(cfg.dataset).name, digest=digest, source_type="local", source=cfg.dataset)
    return DatasetInput(dataset=dataset, tags=[InputTag(key="mlflow.data.context", value="measurement")])


def _params(ours: dict[str, str], existing: dict[str, str]) -> list[Param]:
    """Params not yet logged; a key pre-logged with another value goes under ``cfg.<key>``.

    Params are immutable, and ``mlflow run`` pre-logs its ``-P`` values as raw strings.
    """
    from mlflow.entities import Param

    out: list[Param] = []
    for key, value in ours.items():
        if existing.get(key, value) != value:
            key = PARAM_CONFLICT_PREFIX + key
        if key not in existing:
            out.append(Param(key, value))
    return out


def _tags(tags: dict[str, str]) -> list[RunTag]:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


def _summary_metrics(result: ExperimentResult) -> list[Metric]:
    """Summary metrics at step 0, stamped with the measurement's end time."""
    from mlflow.entities import Metric

    end_ms = _epoch_ms(result.end_time)
    return [Metric(k, v, end_ms, 0) for k, v in result.mlflow_metrics().items()]


def _cycle_metrics(result: ExperimentResult) -> list[Metric]:
    """``cycles/<figure>`` histories: step = cycle index, timestamp = the cycle's end (2+ cycles only)."""
    from mlflow.entities import Metric

    return [
        Metric(key, value, int(end_s * 1000), step)
        for key, points in result.mlflow_cycle_history().items()
        for step, end_s, value in points
    ]


#: Most ``power/gpu{i}_w`` points logged per GPU (``trace.thin_power``); the Parquet trace keeps every sample.
MAX_POWER_POINTS = 2000


def _trace_metrics(trace: PowerTrace, origin_ms: int) -> list[Metric]:
    """``power/gpu{i}_w`` history, one point per sample up to ``MAX_POWER_POINTS`` per GPU, W to 1 mW.

    Longer traces are thinned to bucket means (``trace.thin_power``): logging every sample of a 1-hour
    trace to a SQL store took ~0.4 ms a point (36,000 points: ~15 s). timestamp = the point's own epoch
    ms (floored); step = timestamp - ``origin_ms``: integer ms since the measured window started, so Step
    and wall-time axes agree. Samples before the window (idle baseline, warm-up) get negative steps,
    which MLflow 3.17 stores and charts (int64 steps; checked on sqlite and over HTTP).
    """
    from mlflow.entities import Metric

    points = []
    for gpu in trace.gpus():
        for timestamp_s, power_w in trace.thinned_power(gpu, MAX_POWER_POINTS):
            key, value = mlflow_power_point(gpu, power_w)
            timestamp_ms = int(timestamp_s * 1000)
            points.append(Metric(key, value, timestamp_ms, timestamp_ms - origin_ms))
    return points


def _trace_origin_ms(result: ExperimentResult, trace: PowerTrace) -> int:
    """Epoch ms of the measured window's start; the first sample's without a ``measure`` window."""
    window = result.windows.get("measure")
    if window is not None:
        return int(window.start_s * 1000)
    first_s = trace.first_time_s()
    return int((0.0 if first_s is None else first_s) * 1000)


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _end_quietly(target: _Target, status: str, end_ms: int) -> None:
    with contextlib.suppress(Exception):  # the original error is the one worth reporting
        _end(target, status, end_ms)


def _end(target: _Target, status: str, end_ms: int) -> None:
    with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" here
        target.client.set_terminated(target.run_id, status=status, end_time=end_ms)


# ---- reading runs (compare)
# Appended for ``llem-mlflow compare`` (cli_compare.py): which runs hold llem results, and their result.json.

PARENT_RUN_TAG = "mlflow.parentRunId"


@dataclass(frozen=True)
class StoredResult:
    """One MLflow run holding an llem result, read back from its ``result.json`` artifact."""

    run_id: str
    run_name: str
    result: ExperimentResult


def read_results(
    tracking_uri: str | None,
    *,
    run_ids: Sequence[str] = (),
    experiment_name: str | None = None,
    parent: str | None = None,
) -> list[StoredResult]:
    """The llem results of ``run_ids``, else of ``parent``'s child runs, else of every FINISHED run of
    the experiment (``resolve_experiment_name(experiment_name)``) tagged ``llem.experiment_id``.

    Runs come in the order given, or by start time. Each run's ``result.json`` artifact is downloaded
    into a temporary folder and validated.

    Raises:
        ConfigError: a run id or the experiment is not in the store, or a named run holds no llem result.
        TrackingError: one line; the store is unreachable, or a search or download failed.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = _client(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per result.json otherwise
    if run_ids:
        runs = [_named_run(client, uri, run_id) for run_id in run_ids]
    elif parent:
        runs = _child_runs(client, uri, parent)
    else:
        runs = _experiment_runs(client, uri, resolve_experiment_name(experiment_name))
    return [_stored(client, uri, run) for run in runs]


def _named_run(client: MlflowClient, uri: str, run_id: str) -> Run:
    from llem_mlflow.errors import ConfigError

    run = _guarded(uri, f"read run {run_id}", lambda: _run_or_none(client, run_id))
    if run is None:
        raise ConfigError(f"run {run_id} is not in the MLflow store {scrub_uri(uri)}")
    if LLEM_EXPERIMENT_TAG not in run.data.tags:
        raise ConfigError(f"run {run_id} holds no llem result (no {LLEM_EXPERIMENT_TAG} tag)")
    return run


def _child_runs(client: MlflowClient, uri: str, parent: str) -> list[Run]:
    parent_run = _named_parent(client, uri, parent)
    where = f"tags.`{PARENT_RUN_TAG}` = '{parent}'"
    runs = _guarded(
        uri,
        f"list the child runs of {parent}",
        lambda: _search_all(client, parent_run.info.experiment_id, where),
    )
    return [run for run in runs if LLEM_EXPERIMENT_TAG in run.data.tags]


def _named_parent(client: MlflowClient, uri: str, parent: str) -> Run:
    from llem_mlflow.errors import ConfigError

    run = _guarded(uri, f"read run {parent}", lambda: _run_or_none(client, parent))
    if run is None:
        raise ConfigError(f"parent run {parent} is not in the MLflow store {scrub_uri(uri)}")
    return run


def _experiment_runs(client: MlflowClient, uri: str, name: str) -> list[Run]:
    from llem_mlflow.errors import ConfigError

    experiment = _guarded(uri, f"find experiment {name!r}", lambda: client.get_experiment_by_name(name))
    if experiment is None:
        raise ConfigError(f"no MLflow experiment named {name!r} in the store {scrub_uri(uri)}")
    where = "attributes.status = 'FINISHED'"
    runs = _guarded(
        uri,
        f"list the runs of experiment {name!r}",
        lambda: _search_all(client, experiment.experiment_id, where),
    )
    return [run for run in runs if LLEM_EXPERIMENT_TAG in run.data.tags]


def _search_all(client: MlflowClient, experiment_id: str, where: str) -> list[Run]:
    """Every active run of the experiment matching ``where``, oldest first (all pages)."""
    from mlflow.entities import ViewType

    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=where,
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _stored(client: MlflowClient, uri: str, run: Run) -> StoredResult:
    import tempfile

    from llem_mlflow.results.files import RESULT_FILE, read_result_json

    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="llem-compare-") as tmp:
        local = _guarded(
            uri,
            f"download {RESULT_FILE} of run {run_id}",
            lambda: client.download_artifacts(run_id, RESULT_FILE, tmp),
        )
        result = read_result_json(Path(local))
    return StoredResult(run_id, run.info.run_name or run_id, result)


# ---- tracked blocks (``llem_mlflow.run.track``)


def log_tracked(tracked: Tracked) -> str:
    """Log a ``track.Tracked`` block into the active MLflow run (a new run named after it when none is).

    Metrics ``track/<name>/duration_s``, ``energy_j``, ``avg_power_w``, ``gpu{i}_j`` (counter, at the
    block's end time) and the power history ``track/<name>/power/gpu{i}_w`` (thinned like a run's; step
    = ms since the block started); tag ``track/<name>/status`` (ok, failed or energy_incomplete) and, when
    energy is not (fully) measured, tag ``track/<name>/energy`` saying why. Returns the run id.
    """
    import mlflow

    _prepare_mlflow(mlflow.get_tracking_uri())
    metrics = _tracked_metrics(tracked)
    active = mlflow.active_run()
    run = active or mlflow.start_run(run_name=tracked.name)
    try:
        client = mlflow.tracking.MlflowClient()
        for i in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            client.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
        tags = {f"track/{tracked.name}/status": tracked.status}
        if tracked.energy_note is not None:
            tags[f"track/{tracked.name}/energy"] = tracked.energy_note[:5000]
        mlflow.set_tags(tags)
    finally:
        if active is None:
            with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" here
                mlflow.end_run()
    return str(run.info.run_id)


def _tracked_metrics(tracked: Tracked) -> list[Metric]:
    from mlflow.entities import Metric

    prefix, end_ms = f"track/{tracked.name}", int(tracked.end_s * 1000)
    values = {"duration_s": tracked.duration_s, "energy_j": tracked.total_energy_j}
    values["avg_power_w"] = tracked.avg_power_w
    values.update({f"gpu{gpu}_j": joules for gpu, joules in (tracked.energy_j or {}).items()})
    metrics = [Metric(f"{prefix}/{k}", round(v, 6), end_ms, 0) for k, v in values.items() if v is not None]
    if tracked.trace is not None:
        start_ms = int(tracked.start_s * 1000)
        for gpu in tracked.trace.gpus():
            for at_s, power_w in tracked.trace.thinned_power(gpu, MAX_POWER_POINTS):
                at_ms = int(at_s * 1000)
                key = f"{prefix}/power/gpu{gpu}_w"
                metrics.append(Metric(key, round(power_w, 3), at_ms, at_ms - start_ms))
    return metrics
