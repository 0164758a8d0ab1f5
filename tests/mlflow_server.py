"""A real MLflow tracking server process for tests: start on a free port, wait healthy, stop.

Uses the fast Flask form MLflow's own tests use (about 1.6 s to healthy) with a sqlite store and
proxied artifacts (``mlflow-artifacts:/`` served over HTTP), configured through the
``_MLFLOW_SERVER_*`` variables that ``mlflow server`` hands to its workers (mlflow 3.17.2).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HEALTH_TIMEOUT_S = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(tmp_dir: Path) -> dict[str, str]:
    """Environment for the server: sqlite store and proxied artifact storage under ``tmp_dir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT"))}
    env.update(
        {
            "_MLFLOW_SERVER_FILE_STORE": f"sqlite:///{tmp_dir / 'mlflow.db'}",
            "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
            "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
            "_MLFLOW_SERVER_ARTIFACT_DESTINATION": str(tmp_dir / "artifacts"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_server(tmp_dir: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Launch a tracking server with its data under ``tmp_dir``; return (process, http URI).

    ``port``: listen there (e.g. to restart a server where its clients expect it); default a free one.

    Raises:
        RuntimeError: the server exited or was not healthy within 60 s (message has its log).
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = tmp_dir / "server.log"
    cmd = [sys.executable, "-m", "flask", "--app", "mlflow.server:app", "run"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=tmp_dir, env=server_env(tmp_dir), stdout=log, stderr=subprocess.STDOUT
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, uri, log_path)
    except BaseException:
        stop_server(proc)
        raise
    return proc, uri


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server and wait for it (kill if it ignores SIGTERM for 10 s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_healthy(proc: subprocess.Popen[bytes], uri: str, log_path: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{_tail(log_path)}")
        if _healthy(uri):
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"mlflow server at {uri} not healthy after {HEALTH_TIMEOUT_S:.0f} s:\n{_tail(log_path)}"
    )


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(log_path: Path, limit: int = 4000) -> str:
    return log_path.read_text(errors="replace")[-limit:] if log_path.exists() else "(no log)"
