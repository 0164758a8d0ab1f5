"""The inference server's process and its reachability: the launch command, the port, health, stop.

``render_command`` turns the user's ``server_command`` template into argv; ``launch`` starts it in its own
process group (its log appended to a file), waits until it answers and refuses a busy port;
``LaunchedServer.stop`` ends the whole group (SIGTERM, then SIGKILL after a grace period), also on
Ctrl-C (``with``) and at interpreter exit (``atexit``). ``attach`` checks a server started by someone
else. Ready means ``GET /health`` answers 200; a server without that route (404, 405, 501) is ready
once ``GET /v1/models`` answers 200. Standard library only (``urllib.request``).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import http.client
import json
import os
import re
import shlex
import signal
import socket
import string
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from llem_mlflow.errors import BackendError, ConfigError
from llem_mlflow.interrupts import on_hard_exit

#: The placeholders a ``server_command`` template may use.
PLACEHOLDERS = ("model", "port", "host")
POLL_S, TRY_TIMEOUT_S = 0.3, 2.0  # between two readiness tries; one HTTP try
TAIL_LINES, TAIL_CHARS = 15, 1500  # the log tail an error message carries
GRACE_S, _KILL_WAIT_S = 10.0, 5.0  # SIGTERM to SIGKILL; SIGKILL to giving up waiting
_NO_ROUTE = (404, 405, 501)  # /health is not there: fall back to /v1/models
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_busy(host: str, port: int) -> bool:
    """Something listens on ``host:port``, or the port cannot be bound there (in use)."""
    target = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
    try:
        with socket.create_connection((target, port), timeout=0.5):
            return True
    except OSError:
        pass
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no use
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def render_command(template: str, *, model: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """The argv of ``template`` (shell-like words) with ``{model}``, ``{port}``, ``{host}`` filled in, each
    word after splitting (a model path with spaces stays one word); a literal brace is ``{{`` or ``}}``."""
    allowed = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
    try:
        words = shlex.split(template)
        parsed = [(n, s, c) for _, n, s, c in string.Formatter().parse(template) if n is not None]
    except ValueError as exc:
        raise ConfigError(
            f"server_command {template!r} is malformed ({exc}): fix its quotes or braces "
            f"(a literal brace is written {{{{ or }}}}); placeholders: {allowed}"
        ) from None
    used = {name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") for name, spec, conv in parsed}
    unknown = sorted(used - set(PLACEHOLDERS))  # a conversion or format spec makes one unknown
    if unknown:
        raise ConfigError(f"server_command has an unknown placeholder {{{unknown[0]}}}: allowed: {allowed}")
    if "port" not in used:
        raise ConfigError(
            f"server_command {template!r} has no {{port}} placeholder: add one (e.g. '--port {{port}}') "
            f"so the server listens where llem-mlflow looks; placeholders: {allowed}"
        )
    values = {"model": model, "port": str(port), "host": host}
    return [word.format(**values) for word in words]


def _engine_of_command(command: list[str]) -> str | None:
    names = [os.path.basename(word).lower() for word in command]
    for i, name in enumerate(names):
        after = names[i + 1] if i + 1 < len(names) else ""
        if (name in ("transformers", "transformers-cli") and after == "serve") or name.startswith(
            "transformers.commands"
        ):
            return "transformers"
        if name == "vllm" or name.startswith("vllm.") or name.startswith("vllm-openai"):
            return "vllm"
        if name == "sglang" or name.startswith("sglang."):
            return "sglang"
        if name == "text-generation-launcher" or name.startswith("text-generation-inference"):
            return "tgi"
    return None


def engine_of(command: list[str] | None, owned_by: str | None) -> str:
    """``transformers``, ``vllm``, ``sglang``, ``tgi`` or ``unknown``: from the launch command's words,
    else from the ``owned_by`` field of ``/v1/models`` (vLLM and SGLang name themselves there)."""
    found = _engine_of_command(command) if command else None
    if found:
        return found
    owner = (owned_by or "").lower()
    for engine, marks in (("vllm", ("vllm",)), ("sglang", ("sglang",)), ("tgi", ("tgi", "text-generation"))):
        if any(mark in owner for mark in marks):
            return engine
    return "transformers" if "transformers" in owner else "unknown"


def models_owner(models_json: dict[str, Any]) -> str | None:
    """The ``owned_by`` of the first model ``/v1/models`` lists (None: none listed or no such field)."""
    data = models_json.get("data")
    owner = data[0].get("owned_by") if isinstance(data, list) and data and isinstance(data[0], dict) else None
    return owner if isinstance(owner, str) else None


def served_model_name(models_json: dict[str, Any], requested: str) -> str:
    """The model name requests should carry: ``requested`` if the server lists it, else the one id it
    lists (when it lists exactly one), else ``requested``."""
    data = models_json.get("data")
    data = data if isinstance(data, list) else []
    ids = [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    return ids[0] if len(ids) == 1 else requested


def _root(url: str) -> str:
    """``url`` without a trailing ``/`` or ``/v1`` (an OpenAI ``base_url`` is accepted too)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"server URL {url!r} is not an http(s) URL: write it like http://127.0.0.1:8000")
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _get(url: str, timeout_s: float) -> tuple[int | None, bytes, str]:
    """One GET: (HTTP status or None, body, why it failed in a few words, or '')."""
    host = urllib.parse.urlsplit(url).hostname or ""
    loopback = host in _LOOPBACK or host.startswith("127.")
    opener = urllib.request.build_opener(*([urllib.request.ProxyHandler({})] if loopback else []))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read(), ""
    except urllib.error.HTTPError as exc:
        return exc.code, b"", f"HTTP {exc.code} from {urllib.parse.urlsplit(url).path}"
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # HTTPException: not HTTP
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        refused, timed_out = isinstance(reason, ConnectionRefusedError), isinstance(reason, TimeoutError)
        why = "connection refused" if refused else "timed out" if timed_out else str(reason)
        return None, b"", " ".join(why.split())[:200] or type(reason).__name__  # one line


def _ready_once(root: str) -> tuple[bool, str]:
    """One readiness try: (ready, why not)."""
    status, _, why = _get(f"{root}/health", TRY_TIMEOUT_S)
    if status == 200:
        return True, ""
    if status in _NO_ROUTE:
        status, _, why = _get(f"{root}/v1/models", TRY_TIMEOUT_S)
        return status == 200, why
    return False, why


def _poll_ready(root: str, timeout_s: float, alive: Callable[[], bool] | None) -> tuple[str, str]:
    """Try until ready, the process dies or ``timeout_s`` passes: ('ready' | 'dead' | 'timeout', why)."""
    deadline = time.monotonic() + timeout_s
    why = "no answer yet"
    while True:
        if alive is not None and not alive():
            return "dead", why
        ready, why = _ready_once(root)
        if ready:
            return "ready", ""
        if alive is not None and not alive():
            return "dead", why
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", why
        time.sleep(min(POLL_S, left))


def wait_ready(url: str, timeout_s: float, *, alive: Callable[[], bool] | None = None) -> None:
    """Return once the server at ``url`` is ready; BackendError if ``timeout_s`` passes first or
    ``alive`` (the process started for it) turns False."""
    outcome, why = _poll_ready(_root(url), timeout_s, alive)
    if outcome == "dead":
        raise BackendError(f"the server process for {url} exited before it was ready: see its log")
    if outcome == "timeout":
        raise BackendError(
            f"no server answers at {url} ({why}) within {timeout_s:g} s: start it, or give "
            f"server_command to let llem-mlflow launch it"
        )


def attach(url: str, timeout_s: float = 10) -> dict[str, Any]:
    """Check that a server someone else started answers at ``url``; its ``/v1/models`` JSON ({} if only
    ``/health`` answers)."""
    wait_ready(url, timeout_s)
    status, body, _ = _get(f"{_root(url)}/v1/models", TRY_TIMEOUT_S)
    try:
        parsed = json.loads(body) if status == 200 else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


#: Launched and not yet stopped: what the atexit hook stops (set add/discard are atomic).
_RUNNING: set[LaunchedServer] = set()


class LaunchedServer:
    """A server process this run started (in its own process group); ``with`` stops it, whatever ends
    the block. Made by ``launch``."""

    def __init__(
        self, proc: subprocess.Popen[bytes], url: str, log_path: Path, start: int, grace_s: float
    ) -> None:
        self._proc, self._pgid = proc, proc.pid  # start_new_session: the leader's pid is the group's id
        self.url, self.log_path, self.grace_s = url, log_path, grace_s
        self._log_start = start  # where this launch's output begins in the (appended) log
        self._group_gone = False
        self._lock = threading.Lock()
        _RUNNING.add(self)

    @property
    def pid(self) -> int:
        """The server process's id (also its process group's id)."""
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status once it ended (negative: killed by that signal), else None."""
        return self._proc.poll()

    def alive(self) -> bool:
        """The server process (the group's leader) is still running."""
        return self._proc.poll() is None

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` non-empty lines this launch wrote, on one line joined by `` | ``, at most
        ``TAIL_CHARS`` characters (the end is kept)."""
        try:
            with open(self.log_path, "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(self._log_start, size - 64 * 1024))
                text = log.read().decode("utf-8", errors="replace")
        except OSError as exc:
            return f"(its log cannot be read: {exc})"
        kept = [s for s in (_ANSI.sub("", line).strip() for line in text.splitlines()) if s][-lines:]
        joined = " | ".join(kept) if kept else "(it wrote nothing)"
        return joined if len(joined) <= TAIL_CHARS else "..." + joined[-TAIL_CHARS:]

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM to the whole process group, SIGKILL to it after ``grace_s`` (default: the launch's);
        returns once the group is gone. Idempotent; a second Ctrl-C while waiting kills at once."""
        with self._lock:
            if not self._group_gone:
                self._stop_group(self.grace_s if grace_s is None else grace_s)
        _RUNNING.discard(self)

    def _stop_group(self, grace_s: float) -> None:
        try:
            self._signal(signal.SIGTERM)
            if not self._wait_gone(grace_s):
                self._signal(signal.SIGKILL)
                self._wait_gone(_KILL_WAIT_S)
        except BaseException:  # a second Ctrl-C while waiting: kill at once
            self._signal(signal.SIGKILL)
            raise
        self._group_gone = True

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._pgid, sig)

    def _wait_gone(self, timeout_s: float) -> bool:
        """Reap the leader and wait until no process of the group is left; False if ``timeout_s`` passed."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:  # reaped: an unreaped leader keeps the group alive
                # as PID 1 (docker) or a subreaper, the group's orphans are ours to reap
                with contextlib.suppress(ChildProcessError):
                    while os.waitpid(-self._pgid, os.WNOHANG)[0] > 0:
                        pass
                try:
                    os.killpg(self._pgid, 0)
                except ProcessLookupError:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def __enter__(self) -> LaunchedServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _stop_all() -> None:
    """At interpreter exit: stop every launched server still running (no orphan is left behind)."""
    for server in list(_RUNNING):
        server.stop()


atexit.register(_stop_all)
on_hard_exit(_stop_all)  # a repeated Ctrl-C exits with os._exit, which skips atexit


def _start(
    command: list[str], log_path: Path, env: dict[str, str] | None
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``command`` in a new session, its output appended to ``log_path``: (process, log offset)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log.write(f"=== llem-mlflow: server started {stamp} ===\n".encode())
        log.flush()
        start = log.tell()
        try:
            full_env = None if env is None else {**os.environ, **env}
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=full_env,
            )
        except OSError as exc:
            raise BackendError(
                f"server_command cannot start {command[0]!r} ({exc.strerror or exc}): "
                f"install it or fix server_command"
            ) from None
    return proc, start


def launch(
    command: list[str],
    *,
    url: str,
    log_path: Path,
    start_timeout_s: float,
    env: dict[str, str] | None = None,
    grace_s: float = GRACE_S,
) -> LaunchedServer:
    """Start the server ``command`` (its own process group, output appended to ``log_path``) and return
    once it is ready at ``url``. ``env``: variables set for it on top of this process's environment.

    BackendError, with the process group stopped, if the port is in use (checked before starting), the
    process exits before it is ready, or ``start_timeout_s`` passes.
    """
    root = _root(url)
    parts = urllib.parse.urlsplit(root)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    if port_is_busy(host, port):
        raise BackendError(
            f"port {port} on {host} is in use (by another server?): stop it, or attach to "
            f"it with server_url: {root}, or pick another port"
        )
    proc, log_start = _start(command, log_path, env)
    server = LaunchedServer(proc, root, log_path, log_start, grace_s)
    try:
        outcome, why = _poll_ready(root, start_timeout_s, server.alive)
    except BaseException:
        server.stop()
        raise
    if outcome == "ready":
        return server
    code = server.returncode
    server.stop()
    tail = server.log_tail()
    if outcome == "dead":
        raise BackendError(
            f"the server exited with code {code} before it was ready at {root}: {tail} (full log: {log_path})"
        )
    raise BackendError(
        f"the server was not ready at {root} within start_timeout_s={start_timeout_s:g} s "
        f"({why}); it was stopped: raise start_timeout_s if it was still loading, else see "
        f"its log: {tail} (full log: {log_path})"
    )
