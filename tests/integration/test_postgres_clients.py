"""Many clients, a real database: 8 concurrent ``llem-mlflow run`` processes against one ``mlflow server``
on PostgreSQL (the shared-team setup, docs/reliability/postgres.md).

The test starts its own PostgreSQL (tests/pg_server.py: Debian's ``postgresql`` binaries, 127.0.0.1, a
temp cluster) and skips, with the reason, where that cannot be done. Every run must end FINISHED in the
one experiment, holding its own result's params, tags, metrics and artifacts: none lost, none mixed.
The clients pair up on a seed (same synthetic prompts: one dataset logged by two runs at once); each has
its own run name and output folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mlflow_server import free_port
from pg_server import Postgres, PostgresUnavailable, create_database, start_postgres, stop_postgres

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from llem_mlflow.measure.trace import PowerTrace
    from llem_mlflow.results.schema import ExperimentResult

pytestmark = pytest.mark.slow

CLIENTS = 8
EXPERIMENT = "team-postgres"
RUN_TIMEOUT_S = 300
SERVER_HEALTH_TIMEOUT_S = 120
SCRIPT = Path(sys.executable).with_name("llem-mlflow")
WORKLOAD = [
    "--model", "llem/tiny-gpt2", "--weights", "random", "--device", "cpu", "-n", "2", "--batch-size", "2",
    "--max-input-tokens", "4", "--max-output-tokens", "2", "--baseline-s", "0",
]  # fmt: skip
EXTRA_METRIC_PREFIXES = ("power/", "cycles/")  # histories logged besides the summary metrics
Sample = tuple["ExperimentResult", "PowerTrace"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server (skipped, with the reason, where it cannot be started)."""
    pytest.importorskip("psycopg2", reason="psycopg2 (the dev extra's psycopg2-binary) is not installed")

    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        pytest.skip(f"cannot start PostgreSQL: {exc}")
    try:
        yield server
    finally:
        stop_postgres(server)


@dataclass(frozen=True)
class TeamServer:
    uri: str
    log: Path  # the server's output: one access-log line per request

    def requests(self, method: str, path: str, status: int) -> int:
        """How many ``method path`` requests (query string aside) were answered ``status`` so far."""
        pattern = re.compile(rf'"{method} {re.escape(path)}(\?[^ ]*)? HTTP/[0-9.]+" {status} ')
        return len(pattern.findall(self.log.read_text(errors="replace")))


@pytest.fixture(scope="module")
def team_server(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    """``mlflow server`` on a fresh PostgreSQL database, proxied artifacts in a temp folder."""
    password = secrets.token_hex(16)
    create_database(postgres, "mlflow", password, "mlflow")
    tmp = tmp_path_factory.mktemp("team-server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server"]
    cmd += ["--backend-store-uri", postgres.url("mlflow", "mlflow")]
    cmd += ["--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "2"]
    env = _clean_env() | {"PGPASSWORD": password}  # the database password never appears in a URI
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no huey job runner: CPU for clients
    log_path = tmp / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, uri, log_path)
        yield TeamServer(uri, log_path)
    finally:
        _stop_group(proc)


def test_eight_concurrent_runs_all_finished_none_lost_or_mixed(
    team_server: TeamServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from llem_mlflow.results.files import read_result_json

    started = time.monotonic()
    procs = [_launch(i, team_server.uri, tmp_path) for i in range(CLIENTS)]
    outputs = [_finish(proc, tmp_path / f"client{i}.log") for i, proc in enumerate(procs)]
    wall_s = time.monotonic() - started
    failed = [f"client {i}: exit {rc}\n{out}" for i, (rc, out) in enumerate(outputs) if rc != 0]
    assert not failed, "\n\n".join(failed)
    print(f"\n{CLIENTS} concurrent llem-mlflow runs against mlflow server + PostgreSQL: {wall_s:.1f} s wall")

    folders = {}
    for i in range(CLIENTS):
        (folder,) = [d for d in (tmp_path / f"out{i}").iterdir() if (d / "result.json").is_file()]
        folders[f"client-{i}"] = folder
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri=team_server.uri)
    experiments = client.search_experiments(filter_string=f"name = '{EXPERIMENT}'")
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == sorted(folders), "runs lost or duplicated"
    assert [r.info.status for r in runs] == ["FINISHED"] * CLIENTS

    for run in runs:
        folder = folders[run.info.run_name]
        result = read_result_json(folder / "result.json")
        data = run.data
        assert data.tags["llem.experiment_id"] == result.experiment_id == folder.name, run.info.run_name
        assert data.tags["llem.config_hash"] == result.measurement_config_hash
        assert {k: data.tags.get(k) for k in result.mlflow_tags()} == result.mlflow_tags()
        assert data.params == result.mlflow_params()
        expected = result.mlflow_metrics()
        assert {k: data.metrics.get(k) for k in expected} == expected
        extra = set(data.metrics) - set(expected)
        assert all(k.startswith(EXTRA_METRIC_PREFIXES) for k in extra), sorted(extra)
        assert run.inputs is not None
        (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
        assert dataset.name == "synthetic" and f"seed={result.config.seed} " in dataset.source
        _check_artifacts(client, run.info.run_id, folder, tmp_path / "download" / run.info.run_id)


def test_eight_clients_creating_one_experiment_at_once(
    team_server: TeamServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_result: Sample
) -> None:
    """8 record_result calls released together into a new experiment: each one's get-by-name misses it and
    most of their creates lose the race (RESOURCE_ALREADY_EXISTS); all must still log into the one experiment.
    """
    from mlflow.tracking import MlflowClient

    from llem_mlflow.results import files as artifacts
    from llem_mlflow.tracking.client import record_result

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")  # the product's HTTP defaults, not the tests'
    result, trace = sample_result
    windows = {k: (w.start_s, w.end_s) for k, w in result.windows.items()}
    files = [
        artifacts.write_result_json(result, tmp_path),
        artifacts.write_trace_parquet(trace, tmp_path, windows),
    ]
    lost_before = team_server.requests("POST", "/api/2.0/mlflow/experiments/create", 400)
    start = threading.Barrier(CLIENTS)
    outcomes: list[str] = [""] * CLIENTS

    def client_thread(i: int) -> None:
        start.wait()
        try:
            record_result(
                result,
                files,
                trace,
                tracking_uri=team_server.uri,
                experiment_name="team-burst",
                run_name=f"burst-{i}",
            )
        except Exception as exc:  # reported below, with every other failure
            outcomes[i] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RUN_TIMEOUT_S)
    assert [o for o in outcomes if o] == []
    lost = team_server.requests("POST", "/api/2.0/mlflow/experiments/create", 400) - lost_before
    print(f"\n{CLIENTS} record_result calls at once: {lost} experiment creates lost the race (HTTP 400)")

    client = MlflowClient(tracking_uri=team_server.uri)
    experiments = client.search_experiments(filter_string="name = 'team-burst'")
    assert len(experiments) == 1
    runs = client.search_runs([experiments[0].experiment_id], max_results=100)
    assert sorted(r.info.run_name for r in runs) == sorted(f"burst-{i}" for i in range(CLIENTS))
    for run in runs:
        assert run.info.status == "FINISHED"
        assert result.mlflow_metrics().items() <= run.data.metrics.items()
        assert len(client.get_metric_history(run.info.run_id, "power/gpu0_w")) == len(trace.for_gpu(0))


def _launch(i: int, uri: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "llem_mlflow"]
    args = ["run", *WORKLOAD, "--seed", str(100 + i // 2), "--run-name", f"client-{i}"]
    args += ["--output-dir", str(tmp_path / f"out{i}"), "--tracking-uri", uri]
    args += ["--experiment-name", EXPERIMENT]
    # One torch thread each: 8 processes share the machine's cores.
    env = _clean_env() | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    with (tmp_path / f"client{i}.log").open("wb") as log:
        return subprocess.Popen(
            [*command, *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )


def _finish(proc: subprocess.Popen[bytes], log_path: Path) -> tuple[int, str]:
    """Wait for a client (kill it after RUN_TIMEOUT_S); its exit code and the tail of its output."""
    try:
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode, _tail(log_path, 3000)


def _check_artifacts(client: MlflowClient, run_id: str, folder: Path, dst: Path) -> None:
    listed = {f.path: f.file_size for f in client.list_artifacts(run_id)}
    required = {"result.json", "timeseries.parquet"} | {p.name for p in folder.glob("power.png")}
    assert required <= set(listed), (run_id, sorted(listed))
    for name, size in listed.items():
        assert (folder / name).is_file() and (folder / name).stat().st_size == size, (run_id, name)
    dst.mkdir(parents=True)
    for name in ("result.json", "timeseries.parquet"):
        local = client.download_artifacts(run_id, name, str(dst))
        assert Path(local).read_bytes() == (folder / name).read_bytes(), (run_id, name)


def _clean_env() -> dict[str, str]:
    """This environment without the MLflow settings tests/conftest.py sets: the product's own apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return env | {"MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def _wait_healthy(proc: subprocess.Popen[bytes], uri: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(
        f"mlflow server at {uri} not healthy after {SERVER_HEALTH_TIMEOUT_S} s:\n{_tail(log_path)}"
    )


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (``mlflow server`` and its uvicorn workers); SIGKILL after 15 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # also when the main process died: its workers may not have
        proc.wait(timeout=15)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(log_path: Path, limit: int = 4000) -> str:
    return log_path.read_text(errors="replace")[-limit:] if log_path.exists() else "(no log)"
