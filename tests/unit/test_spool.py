"""The spool: a run whose MLflow logging fails is kept, and ``llem-mlflow sync`` uploads it exactly once.

Real MLflow tracking servers (sqlite store) that are down at the start, killed during the run and
restarted on the same port; FakeBackend runs; the real CLI for sync.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import free_port, start_server, stop_server
from typer.testing import CliRunner

from llem_mlflow.cli.app import app
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.run.execute import Outcome, execute
from llem_mlflow.tracking import spool
from llem_mlflow.tracking.client import LLEM_EXPERIMENT_TAG
from tests.fakes import FakeBackend

EXPERIMENT = "spooled"


def _cfg(tmp_path: Path, uri: str, **kw: object) -> ExperimentConfig:
    base: dict[str, object] = dict(
        n=3, batch_size=2, max_input_tokens=4, max_output_tokens=3, baseline_s=0.0,
        output_dir=str(tmp_path / "out"), tracking_uri=uri, experiment_name=EXPERIMENT,
    )  # fmt: skip
    return ExperimentConfig.model_validate({**base, **kw})


def _run(cfg: ExperimentConfig, backend: FakeBackend | None = None) -> Outcome:
    return execute(cfg, backend=backend or FakeBackend(), store_probe=lambda c: None)


def _runs(uri: str) -> list:  # type: ignore[type-arg]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    return [] if exp is None else list(client.search_runs([exp.experiment_id]))


def _sync(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["sync", *args])
    return result.exit_code, result.output


class Server:
    """A tracking server that can be stopped and started again on the same port with the same data."""

    def __init__(self, data: Path) -> None:
        self.data, self.port, self.proc = data, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc, _ = start_server(self.data, self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc)
            self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "server")
    try:
        yield s
    finally:
        s.stop()


def test_a_store_down_from_the_start_spools_and_sync_logs_it_once(tmp_path: Path, server: Server) -> None:
    outcome = _run(_cfg(tmp_path, server.uri))  # nothing listens yet

    assert outcome.run_id is None and outcome.tracking_error is not None
    assert "spooled in" in outcome.tracking_error and "llem-mlflow sync" in outcome.tracking_error
    (entry,) = spool.pending()
    assert entry.llem_id == outcome.result.experiment_id
    assert entry.target.tracking_uri == server.uri and entry.target.experiment_name == EXPERIMENT
    assert {p.name for p in entry.folder.iterdir()} >= {"result.json", "timeseries.parquet", "spool.json"}
    assert (entry.folder / "result.json").read_bytes() == (outcome.result_dir / "result.json").read_bytes()

    code, out = _sync("--dry-run")
    assert code == 0 and "would log" in out and len(spool.pending()) == 1

    code, out = _sync()  # still down: kept, exit 1
    assert code == 1 and "failed" in out and len(spool.pending()) == 1

    server.start()
    code, out = _sync()
    assert code == 0 and f"{entry.llem_id}  logged run " in out, out
    assert spool.pending() == []
    (run,) = _runs(server.uri)
    assert run.info.status == "FINISHED" and run.data.tags[LLEM_EXPERIMENT_TAG] == entry.llem_id
    assert run.data.metrics == pytest.approx(outcome.result.mlflow_metrics())
    assert run.info.start_time == int(outcome.result.start_time.timestamp() * 1000)  # original time
    names = {a.path for a in MlflowClient(server.uri).list_artifacts(run.info.run_id)}
    assert {"result.json", "timeseries.parquet"} <= names
    record = json.loads((outcome.result_dir / "mlflow_run.json").read_text())
    assert record["run_id"] == run.info.run_id  # the result folder names its run too

    code, out = _sync()  # twice: nothing left, still one run
    assert code == 0 and "nothing spooled" in out
    assert len(_runs(server.uri)) == 1


def test_a_store_dying_mid_run_spools_and_a_half_logged_try_is_retired(
    tmp_path: Path, server: Server
) -> None:
    server.start()
    backend = FakeBackend(on_generate=server.stop)  # the server dies while the model works
    outcome = _run(_cfg(tmp_path, server.uri), backend)
    assert outcome.run_id is None and len(spool.pending()) == 1

    server.start()
    client = MlflowClient(server.uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT)
    exp = exp_id.experiment_id if exp_id else client.create_experiment(EXPERIMENT)
    half = client.create_run(exp, tags={LLEM_EXPERIMENT_TAG: outcome.result.experiment_id})  # a broken try
    client.set_terminated(half.info.run_id, status="FAILED")

    code, out = _sync()
    assert code == 0, out
    active = _runs(server.uri)
    assert len(active) == 1 and active[0].info.status == "FINISHED"
    assert active[0].info.run_id != half.info.run_id
    assert client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"  # restorable, not gone


def test_the_run_mlflow_run_made_is_resumed_by_sync(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.start()
    client = MlflowClient(server.uri)
    made = client.create_run(client.create_experiment(EXPERIMENT))  # as `mlflow run` does
    server.stop()
    monkeypatch.setenv("MLFLOW_RUN_ID", made.info.run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)

    outcome = _run(_cfg(tmp_path, None))
    (entry,) = spool.pending()
    assert outcome.run_id is None and entry.target.mlflow_run_id == made.info.run_id
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)

    server.start()
    code, out = _sync()
    assert code == 0 and made.info.run_id in out, out
    (run,) = _runs(server.uri)
    assert run.info.run_id == made.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags[LLEM_EXPERIMENT_TAG] == entry.llem_id
    assert os.environ.get("MLFLOW_RUN_ID") is None


def test_credentials_never_reach_the_spool(tmp_path: Path) -> None:
    uri = f"http://alice:s3cr3t-pw@127.0.0.1:{free_port()}"
    _run(_cfg(tmp_path, uri))
    (entry,) = spool.pending()
    stored = "".join(p.read_text(errors="replace") for p in entry.folder.iterdir() if p.suffix == ".json")
    assert "s3cr3t-pw" not in stored and "alice" not in stored
    assert entry.target.tracking_uri.startswith("http://127.0.0.1:")
    assert oct(spool.spool_dir().stat().st_mode & 0o777) == "0o700"


_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".llem-mlflow.lock"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""


def test_a_locked_entry_is_left_to_its_holder_and_a_dead_holders_lock_is_taken_over(
    tmp_path: Path, server: Server
) -> None:
    _run(_cfg(tmp_path, server.uri))
    (entry,) = spool.pending()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(entry.folder)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"  # a live sync holds it
        server.start()
        code, out = _sync()
        assert code == 0 and "busy" in out and len(spool.pending()) == 1  # left to it, quietly
    finally:
        holder.kill()  # SIGKILL: the kernel lets go of its lock
        holder.wait()
    code, out = _sync()
    assert code == 0 and "logged" in out and spool.pending() == []
    assert len(_runs(server.uri)) == 1


def test_sync_to_another_store_and_a_broken_entry_is_left_alone(tmp_path: Path) -> None:
    _run(_cfg(tmp_path, f"http://127.0.0.1:{free_port()}"))
    junk = spool.spool_dir() / "not-an-entry"
    junk.mkdir()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    code, out = _sync("--tracking-uri", other)
    assert code == 1 and "not a sound spool entry" in out and "logged" in out  # 1: an entry was skipped
    assert len(_runs(other)) == 1 and junk.is_dir()


def test_a_missing_entry_name_is_exit_2() -> None:
    code, out = _sync("no-such-entry")
    assert code == 2 and "spool entry" in out


class _Failing(BaseHTTPRequestHandler):
    """A tracking server whose health check passes and whose API answers 503 to everything."""

    def _answer(self) -> None:
        healthy = self.path == "/health"
        body = b"OK" if healthy else b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "overloaded"}'
        self.send_response(200 if healthy else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        pass


def test_a_store_answering_5xx_spools_the_result(tmp_path: Path, server: Server) -> None:
    failing = ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=failing.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{failing.server_address[1]}"
        outcome = _run(_cfg(tmp_path, uri))
    finally:
        failing.shutdown()
    assert outcome.run_id is None and outcome.tracking_error is not None
    # MLflow < 3.18 names the status code; 3.18 names its error code for 503 instead
    assert any(why in outcome.tracking_error for why in ("503", "TEMPORARILY_UNAVAILABLE"))
    assert "spooled in" in outcome.tracking_error
    (entry,) = spool.pending()
    server.start()
    code, out = _sync("--tracking-uri", server.uri)
    assert code == 0 and "logged" in out
    assert [r.data.tags[LLEM_EXPERIMENT_TAG] for r in _runs(server.uri)] == [entry.llem_id]
