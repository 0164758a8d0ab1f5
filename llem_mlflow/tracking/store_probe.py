"""Is the MLflow tracking store reachable and whole? Answered in seconds, without importing MLflow.

``probe_store(uri)`` returns None when the store answers, else one line saying what is wrong and
what to do: http(s) (``/health``, then the experiments API), sqlite (the file or its folder exists
and is readable and writable, holds a SQLite header, and is not half-created by a cut migration),
database servers (a TCP connect), and MLflow 3.13+'s ban on file stores. Other schemes (databricks,
plugins) are not probed.

The MLflow-free half of making a sqlite store safely (``store.ready_store`` is the other half):
``store_lock`` (an ``flock`` on ``<db>.llem-lock``) lets one process at a time create or migrate it,
``build_path``/``put_in_place`` build a store beside the file and rename it into place whole,
``read_schema`` tells a half-made store from an older or a newer one, and the one-line messages.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import glob
import os
import socket
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from llem_mlflow.secrets import scrub_secrets

PROBE_TIMEOUT_S = 3.0
DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}
_MESSAGE_LIMIT = 400


def one_line(text: str) -> str:
    """``text`` scrubbed of credentials, whitespace collapsed to one line, cut to a readable length."""
    flat = " ".join(scrub_secrets(text).split())
    return flat if len(flat) <= _MESSAGE_LIMIT else flat[: _MESSAGE_LIMIT - 3] + "..."


def probe_store(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Check that the MLflow store at ``uri`` can be reached, without importing mlflow.

    Returns None when it can, else one line saying what is wrong and what to do. http(s): ``GET
    /health`` (then the experiments API) within ``timeout_s``; sqlite: the file (or its folder) is
    there, readable and writable, an SQLite file, not half-created (read-only); postgresql,
    mysql, mssql: a TCP connect to host:port within ``timeout_s``; file stores: the MLflow 3.13+ ban
    and the folder. Other schemes (databricks, plugins) are not probed: None.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower().split("+")[0]
    if scheme in ("http", "https"):
        problem = _probe_http(parts, timeout_s)
    elif scheme == "sqlite":
        problem = _probe_sqlite(uri)
    elif scheme in DB_PORTS:
        problem = _probe_tcp(parts, DB_PORTS[scheme], timeout_s)
    elif scheme in ("", "file"):
        problem = _probe_file_store(parts)
    else:
        return None
    return None if problem is None else f"MLflow tracking store {scrub_secrets(uri)} {problem}"


def _probe_http(parts: SplitResult, timeout_s: float) -> str | None:
    netloc = parts.netloc.rsplit("@", 1)[-1]
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    deadline = time.monotonic() + timeout_s
    try:
        health = _http_status(f"{base}/health", parts, timeout_s)
        if health == 200:
            return None
        left_s = max(deadline - time.monotonic(), 0.5)
        api = _http_status(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", parts, left_s)
    except (urllib.error.URLError, OSError) as exc:
        return _network_problem(exc, netloc, timeout_s)
    if api == 200:
        return None
    if api in (401, 403):
        return (
            f"refuses our credentials (HTTP {api}): set MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
        )
    return (
        f"answers HTTP {health} at /health and HTTP {api} at the experiments API: "
        "is this an MLflow tracking server? Check the URI"
    )


def _http_status(url: str, parts: SplitResult, timeout_s: float) -> int:
    request = urllib.request.Request(url, headers=_auth_headers(parts))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=_ssl_context()) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _auth_headers(parts: SplitResult) -> dict[str, str]:
    # URI credentials are percent-decoded, as requests (MLflow's HTTP client) decodes them
    user = unquote(parts.username or "") or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = unquote(parts.password or "") or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {"Authorization": f"Bearer {token}"} if token else {}


def _ssl_context() -> ssl.SSLContext | None:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in ("true", "1"):
        return ssl._create_unverified_context()  # noqa: S323 - the user asked for it, as MLflow does
    cert_path = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert_path) if cert_path else None


def _network_problem(exc: BaseException, address: str, timeout_s: float) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    fix = "start the tracking server or fix --tracking-uri / MLFLOW_TRACKING_URI"
    if isinstance(reason, ConnectionRefusedError):
        return f"is unreachable: nothing listens on {address} (connection refused); {fix}"
    if isinstance(reason, TimeoutError):
        return f"did not answer within {timeout_s:g} s ({address}); {fix}"
    if isinstance(reason, socket.gaierror):
        return f"is unreachable: host {address} does not resolve; fix --tracking-uri / MLFLOW_TRACKING_URI"
    return f"is unreachable ({address}): {one_line(str(reason))}; {fix}"


def _probe_sqlite(uri: str) -> str | None:
    rest = uri.split("?", 1)[0].split(":", 1)[1]  # after "sqlite:" or "sqlite+driver:"
    if rest in ("", "//", "///", "///:memory:"):
        return None  # in-memory database
    if not rest.startswith("///"):
        return "is not a sqlite URI MLflow understands: use sqlite:///relative.db or sqlite:////abs/path.db"
    path = Path(rest[3:])
    folder = path.parent
    if path.is_dir():
        return f"points at a folder, not a database file: use e.g. sqlite:///{path / 'mlflow.db'}"
    if not folder.is_dir():
        return (
            f"cannot be opened: folder {folder} does not exist; create it (mkdir -p {folder}) or fix the URI"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot be written: folder {folder} is not writable (sqlite writes its journal there)"
    if path.exists():
        return _check_sqlite_file(path)
    return None


def _check_sqlite_file(path: Path) -> str | None:
    if not os.access(path, os.R_OK | os.W_OK):
        return f"cannot be opened: {path} is not readable and writable by this user; fix its permissions"
    try:
        with path.open("rb") as handle:
            header = handle.read(16)
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if header and header != b"SQLite format 3\x00":
        return f"is not an SQLite database: {path} holds something else; point the URI at another file"
    schema = read_schema(path) if header else None
    return None if schema is None or not schema.half_made() else half_created(path)


# --- a sqlite store is created or migrated whole, once (``store.ready_store`` does the MLflow part) ---

LOCK_SUFFIX = ".llem-lock"  # beside the database file: ``store_lock``
_BUILD_TAG = ".llem-new-"  # a store being built: .<name>.llem-new-<pid>, renamed into place when whole
_ALEMBIC_LEFTOVER = "_alembic_tmp_"  # a table alembic's batch migration drops when the step completes


@dataclass(frozen=True)
class SqliteSchema:
    """What a sqlite file holds, read without MLflow: its tables, alembic revision, experiment rows."""

    tables: frozenset[str]
    revision: str | None  # alembic_version's row; None when the table or its row is missing
    experiments: int | None  # rows of ``experiments``; None without that table

    def half_made(self) -> bool:
        """A batch migration's leftover table: a migration was cut mid-step (no migration can go on)."""
        return any(t.startswith(_ALEMBIC_LEFTOVER) for t in self.tables)


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for other schemes and in-memory databases."""
    if urlsplit(uri).scheme.lower().split("+")[0] != "sqlite":
        return None
    rest = uri.split("?", 1)[0].split(":", 1)[1]
    if not rest.startswith("///") or rest in ("///", "///:memory:"):
        return None
    return Path(rest[3:])


def read_schema(path: Path) -> SqliteSchema | None:
    """The tables of the sqlite file ``path`` (read-only); None when it cannot be read now."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = frozenset(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'"))
            rows = _rows(db, "SELECT version_num FROM alembic_version", "alembic_version" in tables)
            count = _rows(db, "SELECT COUNT(*) FROM experiments", "experiments" in tables)
    except (sqlite3.Error, OSError):
        return None  # locked by a writer, or unreadable: no verdict, MLflow reports it
    return SqliteSchema(
        tables, str(rows[0][0]) if rows else None, int(count[0][0]) if "experiments" in tables else None
    )


def _rows(db: sqlite3.Connection, query: str, table_exists: bool) -> list[tuple[Any, ...]]:
    return db.execute(query).fetchall() if table_exists else []


def half_created(path: Path) -> str:
    """The one line (after the store's URI) for a store a cut migration left half made."""
    return (
        f"is half-created (an interrupted migration) and unusable: move it aside "
        f"(mv {path} {path}.broken); the next use makes a new one"
    )


def older_schema(uri: str, revision: str, head: str) -> str:
    """The one line for a store made by an older MLflow that this MLflow does not migrate by itself."""
    return (
        f"has an older schema ({revision}; this MLflow needs {head}): back it up, then run "
        f"mlflow db upgrade {scrub_secrets(uri)}"
    )


def newer_schema(revision: str) -> str:
    """The one line for a store made by a newer MLflow."""
    return (
        f"was made by a newer MLflow (schema {revision}, unknown to this one): upgrade mlflow "
        "(pip install -U mlflow) or use another store"
    )


@contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock (``flock``) on ``<path>.llem-lock`` (created, never removed).

    Best effort: where the lock file cannot be made or locked (a read-only folder, a file system
    without ``flock``) the block runs unlocked.
    """
    try:
        fd = os.open(f"{path}{LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def build_path(path: Path) -> Path:
    """Where a store for ``path`` is built before it is renamed into place (same folder: same disk)."""
    return path.with_name(f".{path.name}{_BUILD_TAG}{os.getpid()}")


def remove_stale_builds(path: Path) -> None:
    """Remove builds (and their journals) that a killed process left; call it holding ``store_lock``."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}{_BUILD_TAG}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


@contextmanager
def copied(path: Path, copy: Path) -> Iterator[None]:
    """Copy the sqlite store ``path`` to ``copy``; other writers of ``path`` wait until the block ends."""
    writer = sqlite3.connect(path, timeout=60)
    try:
        writer.execute("BEGIN IMMEDIATE")  # a write lock, so the copy misses no write
        with (
            contextlib.closing(sqlite3.connect(path)) as reader,
            contextlib.closing(sqlite3.connect(copy)) as to,
        ):
            reader.backup(to)  # a second connection: the writer's own cannot back itself up
        os.chmod(copy, path.stat().st_mode & 0o7777)
        yield
    finally:
        writer.close()


def put_in_place(built: Path, path: Path) -> None:
    """Rename the whole store ``built`` onto ``path`` atomically, flushed to disk first."""
    for target in (built, built.parent):
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(built, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _probe_tcp(parts: SplitResult, default_port: int, timeout_s: float) -> str | None:
    try:
        host, port = parts.hostname, parts.port or default_port
    except ValueError:
        return "has an invalid port; fix the URI"
    if not host:
        return None  # a unix socket or driver-specific form: not probed
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return _network_problem(exc, f"{host}:{port}", timeout_s)
    return None


def _probe_file_store(parts: SplitResult) -> str | None:
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1"):
        return (
            "is a file store, which MLflow 3.13+ refuses: use sqlite:///mlflow.db "
            "(or set MLFLOW_ALLOW_FILE_STORE=true)"
        )
    folder = Path(parts.path or ".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot be written: {folder} is not writable"
    return None
