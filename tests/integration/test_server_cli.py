"""The server scenario through the real CLI against a real ``transformers serve`` on CPU (a tiny random
model folder written offline): launch, attach, Ctrl-C, into a real MLflow sqlite store; and no server
process outlives any of them (every process whose command line names the test's model folder is found
through /proc)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from serving_model import SERVE_ENV, SERVE_TEMPLATE, write_tiny_model

from llem_mlflow.serving.process import free_port, launch
from tests.integration.test_transformers_serve import _why_skip

pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))]
ROOT = Path(__file__).resolve().parents[2]


def processes_naming(text: str) -> list[int]:
    """Live processes whose command line holds ``text`` (zombies are gone already, not counted)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("served") / "tiny-served-model")


def _env(tmp_path: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # `transformers` (the serve CLI) is installed beside python
    return {
        **os.environ,
        **SERVE_ENV,
        "HF_HOME": str(tmp_path / "hf"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }


def _cli(model: Path, tmp_path: Path, example: str, *extra: str) -> list[str]:
    """The CLI on ``examples/<example>`` with a small workload (flags override the file's fields)."""
    return [
        sys.executable, "-m", "llem_mlflow", "run", f"examples/{example}", "--model", str(model),
        "--n", "8", "--max-input-tokens", "16", "--max-output-tokens", "8", "--baseline-s", "0",
        "--cycles", "1", "--output-dir", str(tmp_path / "out"), "--experiment-name", "served", *extra,
    ]  # fmt: skip


def _result(tmp_path: Path) -> dict:
    (path,) = (tmp_path / "out").glob("*/result.json")
    return json.loads(path.read_text())


def test_a_launched_server_is_measured_logged_and_stopped(model: Path, tmp_path: Path) -> None:
    # the example's command with CPU flags (--continuous-batching on CPU takes ~1 min and GBs to start)
    argv = _cli(model, tmp_path, "server-launch.yaml", "--server-command", SERVE_TEMPLATE, "--cycles", "2")
    argv += ["--concurrency", "4"]
    proc = subprocess.run(argv, env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert processes_naming(str(model)) == []  # the server and its model process are gone
    result = _result(tmp_path)
    s = result["serving"]
    assert result["scenario"] == "server" and s["engine"] == "transformers" and s["launched"] is True
    assert s["requests"] == 16 and s["completed"] == 16 and s["failed"] == 0
    assert result["output_tokens"] == 16 * 8  # min_new_tokens through generation_config: exactly 8 each
    folder = next((tmp_path / "out").glob("*/result.json")).parent
    table = pq.read_table(folder / "requests.parquet").to_pylist()
    assert sum(r["output_tokens"] for r in table) == result["output_tokens"]
    assert "transformers at http://127.0.0.1:" in proc.stdout and "(launched)" in proc.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    assert run.data.tags["llem.scenario"] == "server" and run.data.tags["llem.engine"] == "transformers"
    assert run.data.metrics["serving/completed"] == 16 and "latency/ttft_p50_s" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"result.json", "timeseries.parquet", "requests.parquet"} <= artifacts


def test_ctrl_c_during_the_load_stops_the_server_and_keeps_what_ended(model: Path, tmp_path: Path) -> None:
    argv = _cli(
        model, tmp_path, "server-launch.yaml", "--server-command", SERVE_TEMPLATE, "--concurrency", "1"
    )
    argv[argv.index("--n") + 1] = "64"
    argv[argv.index("--max-output-tokens") + 1] = "64"
    proc = subprocess.Popen(
        argv, env=_env(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    log = b""
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    while b"cycle 1/1" not in log and time.monotonic() < deadline and proc.poll() is None:
        log += proc.stderr.read() or b""
        time.sleep(0.2)
    assert b"cycle 1/1" in log, log.decode(errors="replace")[-3000:]
    time.sleep(3)  # some requests complete
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    log += proc.stderr.read() or b""
    assert proc.returncode == 130, log.decode(errors="replace")[-4000:]
    assert processes_naming(str(model)) == []
    result = _result(tmp_path)
    assert result["status"] == "interrupted"
    assert 0 < result["serving"]["completed"] < 64


@pytest.fixture
def running(model: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    argv = SERVE_TEMPLATE.format(model=model, host="127.0.0.1", port=port).split()
    argv = [sys.executable, "-m", "transformers.cli.transformers", *argv[1:]]
    env = {**SERVE_ENV, "HF_HOME": str(tmp_path / "hf-attached")}
    url = f"http://127.0.0.1:{port}"
    with launch(argv, url=url, log_path=tmp_path / "attached.log", start_timeout_s=180, env=env):
        yield url


def test_an_attached_server_is_measured_and_left_running(model: Path, tmp_path: Path, running: str) -> None:
    argv = _cli(model, tmp_path, "server-attach.yaml", "--server-url", running, "--api", "chat")
    argv += ["--request-rate", "20"]
    proc = subprocess.run(argv, env=_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = _result(tmp_path)["serving"]
    assert s["launched"] is False and s["load"] == "open" and s["api"] == "chat" and s["completed"] == 8
    assert processes_naming(str(model)) != []  # an attached server is not ours to stop
