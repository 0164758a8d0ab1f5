"""Is the MLflow tracking store reachable? Answered in seconds, without importing MLflow.

``probe_store(uri)`` returns None when the store answers, else one line saying what is wrong and
what to do: http(s) (``/health``, then the experiments API), sqlite (the file or its folder exists
and is readable and writable, and holds a SQLite header), database servers (a TCP connect), and
MLflow 3.13+'s ban on file stores. Other schemes (databricks, plugins) are not probed.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import SplitResult, urlsplit, urlunsplit

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
    there, readable and writable, and is an SQLite file, checked without opening it; postgresql,
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
    user = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = parts.password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
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
    return None


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
