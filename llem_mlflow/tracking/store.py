"""A store ready to use, and a client for it: ``open_client`` probes the store, bounds MLflow's retries and
makes a SQL store ready (``ready_store``) before it hands out an ``MlflowClient``.

A dead store costs seconds, not minutes: ``store_probe.probe_store`` checks it first without MLflow.
A SQL store is made ready first: created or migrated once, under a lock, whole (a sqlite store is built
beside the file and renamed into place), with signals deferred; a broken one is one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem_mlflow import interrupts
from llem_mlflow.errors import TrackingError
from llem_mlflow.tracking import store_probe
from llem_mlflow.tracking.connection import guarded, prepare_mlflow
from llem_mlflow.tracking.store_probe import one_line, probe_store
from llem_mlflow.tracking.uris import is_sql, scrub_uri

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_READY: set[str] = set()  # URIs made ready in this process (MLflow caches their stores too)


def open_client(uri: str) -> MlflowClient:
    """An MlflowClient for ``uri``: the probe passed, MLflow's retries bounded, the store ready."""
    problem = probe_store(uri)
    if problem is not None:
        raise TrackingError(problem)
    prepare_mlflow(uri)
    ready_store(uri)
    from mlflow.tracking import MlflowClient

    return guarded(uri, "open the store", lambda: MlflowClient(tracking_uri=uri))


# --- a SQL store is created or migrated whole, once, and never while a signal can cut it ---------------


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
    if uri in _READY or not is_sql(uri):
        return
    prepare_mlflow(uri)
    path = store_probe.sqlite_file(uri)
    lock_path = path if path is not None else _host_lock_path(uri)
    with store_probe.store_lock(lock_path):
        if path is not None:
            _ready_sqlite(uri, path)
        with interrupts.deferred():  # MLflow's own open may create its Default experiment, or migrate
            guarded(uri, "open the store", lambda: _open_store(uri))
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
        guarded(uri, "create the store", lambda: _build_store(path, source=None))
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
        f"could not be migrated to this MLflow's schema ({one_line(str(exc))}); it is left as it was: "
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
