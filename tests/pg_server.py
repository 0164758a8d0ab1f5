"""A throwaway PostgreSQL server for tests: initdb into a temp folder, start on 127.0.0.1, stop, delete.

Uses the PostgreSQL binaries on the machine (Debian's ``postgresql`` package: ``/usr/lib/postgresql/<v>/bin``,
or ``initdb``/``pg_ctl`` on PATH). PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` system user (else ``nobody``) in a data folder that user owns. Only TCP on 127.0.0.1, no Unix
socket; password (scram-sha-256) authentication for every connection, including the superuser's.

``find_binaries`` / ``start_postgres`` return or raise a one-line reason, for ``pytest.skip``.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow_server import free_port

START_TIMEOUT_S = 30
START_ATTEMPTS = 3
SUPERUSER = "llem_admin"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started here; the message says why (one line)."""


@dataclass(frozen=True)
class Postgres:
    """A running server: connect to ``host:port`` as ``SUPERUSER`` with ``password``."""

    bin_dir: Path
    data_dir: Path
    host: str
    port: int
    password: str
    uid: int | None  # the user the server runs as (None: this process's user)
    gid: int | None

    def url(self, user: str, database: str) -> str:
        """A SQLAlchemy URL (psycopg2 driver) without a password: libpq reads ``PGPASSWORD``."""
        return f"postgresql+psycopg2://{user}@{self.host}:{self.port}/{database}"


def find_binaries() -> Path:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Raises:
        PostgresUnavailable: none found.
    """
    candidates = []
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(os.path.realpath(initdb)).parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
        "/usr/lib/postgresql/*/bin; install Debian's `postgresql` package"
    )


def start_postgres() -> Postgres:
    """initdb a fresh cluster in a temp folder and start it on a free 127.0.0.1 port.

    Raises:
        PostgresUnavailable: binaries missing, no unprivileged user to run as, or the server did not
            start (the message ends with the log's tail).
    """
    bin_dir = find_binaries()
    uid, gid = _server_user()
    data_dir = Path(tempfile.mkdtemp(prefix="llem-pg-"))  # under /tmp: reachable by the server's user
    if uid is not None:
        os.chown(data_dir, uid, gid if gid is not None else -1)
    server = Postgres(bin_dir, data_dir, "127.0.0.1", free_port(), secrets.token_hex(16), uid, gid)
    try:
        _initdb(server)
        for attempt in range(START_ATTEMPTS):
            try:
                _start(server)
                return server
            except PostgresUnavailable as exc:  # the free port may have been taken in the meantime
                if "already in use" not in str(exc) or attempt + 1 == START_ATTEMPTS:
                    raise
                server = replace(server, port=free_port())
    except BaseException:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


def stop_postgres(server: Postgres) -> None:
    """Stop the server (fast shutdown; SIGKILL if it lingers) and delete its data folder."""
    cluster = server.data_dir / "cluster"
    try:
        _as_server_user(server, [str(server.bin_dir / "pg_ctl"), "stop", "-D", str(cluster), "-m", "fast"])
    except (subprocess.SubprocessError, OSError):
        pid = _postmaster_pid(cluster)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            else:
                time.sleep(0.5)
    shutil.rmtree(server.data_dir, ignore_errors=True)


def create_database(server: Postgres, user: str, password: str, database: str) -> None:
    """CREATE ROLE ``user`` (LOGIN, ``password``) and CREATE DATABASE ``database`` owned by it."""
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(
        host=server.host, port=server.port, user=SUPERUSER, password=server.password, dbname="postgres"
    )
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)), (password,))
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(user))
            )
    finally:
        conn.close()


def _server_user() -> tuple[int | None, int | None]:
    if os.geteuid() != 0:
        return None, None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return entry.pw_uid, entry.pw_gid
    raise PostgresUnavailable("running as root, and no unprivileged user (postgres, nobody) to run it as")


def _initdb(server: Postgres) -> None:
    pwfile = server.data_dir / "pwfile"
    pwfile.write_text(server.password + "\n")
    pwfile.chmod(0o600)
    if server.uid is not None:
        os.chown(pwfile, server.uid, server.gid if server.gid is not None else -1)
    cmd = [str(server.bin_dir / "initdb"), "-D", str(server.data_dir / "cluster"), "-U", SUPERUSER]
    cmd += ["--pwfile", str(pwfile), "--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C", "--no-sync"]
    _as_server_user(server, cmd, what="initdb")
    pwfile.unlink()


def _start(server: Postgres) -> None:
    cluster = server.data_dir / "cluster"
    log = server.data_dir / "postgres.log"
    options = f"-c listen_addresses={server.host} -p {server.port} -c unix_socket_directories=''"
    cmd = [str(server.bin_dir / "pg_ctl"), "start", "-D", str(cluster), "-l", str(log), "-o", options]
    cmd += ["-w", "-t", str(START_TIMEOUT_S)]
    try:
        _as_server_user(server, cmd, what="pg_ctl start")
    except PostgresUnavailable as exc:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise PostgresUnavailable(f"{exc}; server log: {tail}") from None


def _as_server_user(server: Postgres, cmd: list[str], what: str = "") -> None:
    """Run ``cmd`` as the server's user, with a clean environment; raise PostgresUnavailable on failure."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(server.data_dir)}
    proc = subprocess.run(
        cmd,
        env=env,
        cwd=server.data_dir,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 30,
        check=False,
        user=server.uid,
        group=server.gid,
        extra_groups=[] if server.uid is not None else None,
    )
    if proc.returncode != 0:
        output = " ".join((proc.stdout + proc.stderr).split())[-2000:]
        message = f"{what or cmd[0]} failed with exit code {proc.returncode}: {output}"
        if what:
            raise PostgresUnavailable(message)
        raise subprocess.SubprocessError(message)


def _postmaster_pid(cluster: Path) -> int | None:
    try:
        return int((cluster / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
