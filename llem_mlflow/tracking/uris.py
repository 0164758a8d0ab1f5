"""Where a result goes: the tracking URI (given, from the environment or an active run), the experiment
name, whether an installed MLflow handles the URI's scheme, and the URI as it may be shown.

Answered without importing mlflow, except where mlflow is already imported (an active run) or a
scheme only MLflow's own store registry knows is asked about.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from llem_mlflow.config import DEFAULT_EXPERIMENT
from llem_mlflow.secrets import scrub_secrets
from llem_mlflow.tracking.store_probe import DB_PORTS

#: Schemes every MLflow registers a tracking store for: answered without importing mlflow.
_BUILTIN_SCHEMES = frozenset(
    {"", "file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks"}
)


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


def is_sql(uri: str) -> bool:
    """Whether ``uri`` names a SQL store (sqlite or a database server)."""
    scheme = urlsplit(uri).scheme.lower().split("+")[0]
    return scheme == "sqlite" or scheme in DB_PORTS


def resolve_experiment_name(explicit: str | None) -> str:
    """``explicit``, else ``MLFLOW_EXPERIMENT_NAME``, else ``"llem-mlflow"``."""
    return explicit or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def scrub_uri(uri: str) -> str:
    """The URI (or any text holding URIs) without credentials; see ``secrets.scrub_secrets``."""
    return scrub_secrets(uri)
