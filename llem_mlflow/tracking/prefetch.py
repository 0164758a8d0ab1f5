"""MLflow imported in the background while the model loads (``prefetch``), so the ~3-5 s import overlaps
the load instead of following the measurement; a SQL store is made ready there too.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
from collections.abc import Sequence

from llem_mlflow.errors import TrackingError
from llem_mlflow.tracking.store import ready_store
from llem_mlflow.tracking.store_probe import probe_store
from llem_mlflow.tracking.uris import is_sql, target_tracking_uri

log = logging.getLogger(__name__)

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
        if is_sql(target_tracking_uri(tracking_uri)):
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
    if not is_sql(uri) or "mlflow.store.tracking.sqlalchemy_store" not in sys.modules:
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
