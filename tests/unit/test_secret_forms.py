"""Secrets in every form: however a tracking URI carries its credentials, none reaches anything we write.

One rule (``llem_mlflow.secrets``): database URIs keep their user name and lose the password, every other
scheme loses its whole user part, secret-named parameters lose their value. Checked on the scrubbing
itself, then through the real parts: runs logged to a real MLflow server (which ignores the
credentials) with MLflow's own "View run at <URI>" line left on, the spool manifest, errors, log lines
and a crashing CLI's traceback.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from llem_mlflow import secrets as llem_secrets
from llem_mlflow.cli.console import _CurrentStderr
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import TrackingError
from llem_mlflow.run.execute import execute
from llem_mlflow.secrets import scrub_secrets
from llem_mlflow.tracking import spool, store_probe
from tests.fakes import FakeBackend

# (URI, the secrets in it: each must appear nowhere, raw or percent-decoded, what the URI becomes). The
# http forms the old rule already scrubbed are checked end to end below (HTTP_FORMS); databricks://profile
# URIs hold no credentials and are left as they are.
FORMS = [
    ("http://alice:p@ss@mlflow.example:5000/", ["p@ss", "alice:p"], "http://mlflow.example:5000/"),
    ("postgresql://u:p%2Fw@h:5432/db", ["p%2Fw", "p/w"], "postgresql://u@h:5432/db"),
    ("postgresql+psycopg2://u:p/w#x@h/db", ["p/w#x"], "postgresql+psycopg2://u@h/db"),
    ("mysql+pymysql://u:my-s3cret@h/db", ["my-s3cret"], "mysql+pymysql://u@h/db"),
    ("mssql+pyodbc://sa:Str0ng@ss@h:1433/db", ["Str0ng@ss", "Str0ng"], "mssql+pyodbc://sa@h:1433/db"),
    (
        "postgresql://u@h/db?password=qs3cret&sslmode=require",
        ["qs3cret"],
        "postgresql://u@h/db?password=***&sslmode=require",
    ),  # fmt: skip
]
# The http forms, pointed at the real server (which ignores the credentials): (user part, secrets).
HTTP_FORMS = [
    ("alice:p%40ss%2Fw0rd@", ["p%40ss%2Fw0rd", "p@ss/w0rd"]),
    ("ghp_T0KEN123@", ["ghp_T0KEN123"]),
    ("alice:p@ss@", ["p@ss", "alice:p"]),
    ("bob:plain-s3cret@", ["plain-s3cret"]),
]


@pytest.mark.parametrize(("uri", "secrets", "expected"), FORMS, ids=[f[0] for f in FORMS])
def test_every_form_becomes_the_documented_uri(uri: str, secrets: list[str], expected: str) -> None:
    clean = scrub_secrets(uri)
    assert clean == expected
    assert [s for s in secrets if s in clean] == []
    assert scrub_secrets(f"could not reach {uri} - refused") == f"could not reach {expected} - refused"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("connection failed: host=h port=5432 user=u password=dsn-s3cret dbname=db", "dsn-s3cret"),
        ("MLFLOW_TRACKING_PASSWORD=env-s3cret was set", "env-s3cret"),
        ("headers {'Authorization': 'Basic YWxpY2U6cHc9PQ=='}", "YWxpY2U6cHc9PQ=="),
        ("Authorization: Bearer tok-s3cret-123", "tok-s3cret-123"),
    ],
)
def test_secrets_outside_uris_are_masked(text: str, secret: str) -> None:
    assert secret not in scrub_secrets(text)


# ---------------------------------------------------------------- logged over HTTP, stdout included


def _cfg(tmp_path: Path, uri: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        dict(
            n=2,
            batch_size=2,
            max_input_tokens=4,
            max_output_tokens=2,
            baseline_s=0.0,
            output_dir=str(tmp_path / "out"),
            tracking_uri=uri,
            experiment_name="forms",
        )  # fmt: skip
    )


def _found(blob: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in blob]


def _everything_logged(server: str, run_id: str, dst: Path) -> str:
    client = MlflowClient(server)
    run = client.get_run(run_id)
    folder = Path(client.download_artifacts(run_id, "", str(dst)))
    files = "".join(p.read_bytes().decode("utf-8", "replace") for p in folder.rglob("*") if p.is_file())
    return repr(run.data.params) + repr(run.data.tags) + files


@pytest.mark.parametrize(("userinfo", "secrets"), HTTP_FORMS, ids=[f[0] for f in HTTP_FORMS])
def test_a_run_logged_with_credentials_in_the_uri_shows_and_stores_none(
    mlflow_server: str, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    userinfo: str, secrets: list[str],
) -> None:  # fmt: skip
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")  # MLflow prints "View run at <URI>"
    uri = mlflow_server.replace("http://", f"http://{userinfo}")
    outcome = execute(_cfg(tmp_path, uri), backend=FakeBackend())
    assert outcome.run_id is not None, outcome.tracking_error
    out, err = capfd.readouterr()
    assert f"at: {mlflow_server}/#/experiments/" in out  # MLflow's line is there, without credentials
    assert _found(out + err, secrets) == []
    written = "".join(p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*.json"))
    assert '"tracking_uri": "' + mlflow_server in written
    assert _found(written, secrets) == []
    assert _found(_everything_logged(mlflow_server, outcome.run_id, tmp_path / "dl"), secrets) == []


# ---------------------------------------------------------------- the spool keeps the user, not the secret

DB_FORMS = [f for f in FORMS if f[0].split(":")[0].split("+")[0] in ("postgresql", "mysql", "mssql")]


@pytest.mark.parametrize(("uri", "secrets", "expected"), DB_FORMS, ids=[f[0] for f in DB_FORMS])
def test_a_spooled_database_uri_keeps_its_user_and_loses_its_secret(
    tmp_path: Path, uri: str, secrets: list[str], expected: str
) -> None:
    folder = tmp_path / "result"
    folder.mkdir()
    (folder / "result.json").write_text("{}")
    reason = f"could not log to {uri}: connection refused"
    target = spool.Target(tracking_uri=uri, experiment_name="exp")
    entry = spool.spool_result(folder, "llem-1", target, reason, root=tmp_path / "spool")
    manifest = json.loads((entry / spool.MANIFEST).read_text())
    assert manifest["target"]["tracking_uri"] == expected
    assert _found(json.dumps(manifest), secrets) == []


def test_sync_brings_a_database_password_back_only_for_the_same_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = "postgresql+psycopg2://alice@db.example:5432/mlflow"
    with_password = "postgresql+psycopg2://alice:p%40ss@db.example:5432/mlflow"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", with_password)
    assert spool.sync_uri(stored, None) == with_password
    assert spool.sync_uri(stored, "sqlite:///other.db") == "sqlite:///other.db"  # --tracking-uri wins
    for other in ("postgresql+psycopg2://bob:pw@db.example:5432/mlflow",
                  "postgresql+psycopg2://alice:pw@db.example:5432/other",
                  "postgresql+psycopg2://alice:pw@elsewhere:5432/mlflow"):  # fmt: skip
        monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
        assert spool.sync_uri(stored, None) == stored  # another store's password never travels
    monkeypatch.setenv("MLFLOW_TRACKING_URI", with_password)
    assert spool.sync_uri("postgresql+psycopg2://db.example:5432/mlflow", None) == with_password  # old entry
    assert spool.sync_uri("postgresql://u@h/db?password=***&sslmode=require", None) == (
        "postgresql://u@h/db?sslmode=require"  # the driver reads PGPASSWORD then
    )


def test_same_store_and_usable_uri() -> None:
    assert llem_secrets.same_store("https://tok@h:5000/", "https://h:5000")
    assert not llem_secrets.same_store("https://tok@h:5001", "https://h:5000")
    assert llem_secrets.usable_uri("postgresql://u@h/db?a=1&password=***") == "postgresql://u@h/db?a=1"
    assert llem_secrets.usable_uri("postgresql://u@h/db?password=***") == "postgresql://u@h/db"


# ---------------------------------------------------------------- errors, log lines, tracebacks, the probe


def test_an_error_message_is_scrubbed_when_the_error_is_made() -> None:
    exc = TrackingError("could not log at postgresql+psycopg2://u:p/w@h/db: refused")
    assert str(exc) == "could not log at postgresql+psycopg2://u@h/db: refused"


def test_a_log_line_naming_the_uri_reaches_the_terminal_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.LogRecord(
        "mlflow", logging.WARNING, __file__, 1, "retrying %s", ("https://u:lg-s3cret@h",), None
    )
    handler.emit(record)
    assert capsys.readouterr().err == "retrying https://h\n"


def test_a_crash_prints_its_traceback_without_credentials(tmp_path: Path) -> None:
    code = (
        "import llem_mlflow.cli.app as cli\n"
        "def boom(): raise RuntimeError('store http://bob:tb-s3cret@127.0.0.1:1 broke')\n"
        "cli.app = boom\n"
        "cli.main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # this checkout's package
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert proc.returncode == 1
    assert "RuntimeError: store http://127.0.0.1:1 broke" in proc.stderr
    assert "tb-s3cret" not in proc.stdout + proc.stderr


@pytest.fixture
def basic_auth_server() -> Iterator[str]:
    """An HTTP server answering 200 only to Basic alice / p@ss:w (what a login proxy does), else 401."""
    expected = "Basic " + base64.b64encode(b"alice:p@ss:w").decode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.headers.get("Authorization") == expected else 401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_probe_sends_percent_encoded_credentials_decoded(basic_auth_server: str) -> None:
    assert store_probe.probe_store(f"http://alice:p%40ss%3Aw@{basic_auth_server}") is None
    problem = store_probe.probe_store(f"http://alice:wrong@{basic_auth_server}")
    assert problem is not None and "refuses our credentials" in problem and "wrong" not in problem


def test_scrubbed_stdout_nests_across_threads_and_puts_the_stream_back(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = sys.stdout
    entered, release = threading.Barrier(3), threading.Event()

    def hold() -> None:
        try:
            with llem_secrets.scrubbed_stdout():
                entered.wait()
                release.wait()
                print("View run at http://u:th-s3cret@h/#/x")
        except BaseException:
            entered.abort()  # the test fails at once instead of waiting forever
            raise

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait()
    release.set()
    for t in threads:
        t.join()
    assert sys.stdout is before
    out = capsys.readouterr().out
    assert out.count("View run at http://h/#/x") == 2 and "th-s3cret" not in out
