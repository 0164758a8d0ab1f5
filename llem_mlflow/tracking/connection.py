"""How llem talks to MLflow: bounded retries, quiet housekeeping loggers, and every failure as one line.

A dead store costs seconds, not minutes: MLflow's HTTP retries and SQL engine retries are bounded
(``prepare_mlflow``) before a client is made, and ``guarded`` turns whatever an MLflow call raises into
one ``TrackingError`` line naming the store without credentials.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from importlib import metadata
from typing import TypeVar
from urllib.parse import urlsplit

from llem_mlflow.errors import TrackingError
from llem_mlflow.secrets import scrubbed_stdout
from llem_mlflow.tracking.store_probe import DB_PORTS, one_line
from llem_mlflow.tracking.uris import scrub_uri

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
_T = TypeVar("_T")


def mlflow_version() -> str | None:
    """Installed mlflow (or mlflow-skinny) version, without importing mlflow."""
    for dist in ("mlflow", "mlflow-skinny"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def prepare_mlflow(uri: str) -> None:
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


def guarded(uri: str, what: str, action: Callable[[], _T]) -> _T:
    """Run ``action``; turn any failure into a one-line TrackingError naming the (scrubbed) URI."""
    try:
        with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" when a run ends
            return action()
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(
            f"could not {what} at MLflow tracking URI {scrub_uri(uri)}: {one_line(str(exc))}. "
            "Check that the URI is right and the tracking server is reachable."
        ) from None  # the cause's text (scrubbed above) may hold credentials
