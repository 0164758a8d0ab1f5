"""No secret reaches a param, tag, artifact, log line, error message or file: the real CLI end to end.

Secrets are planted where users keep them (Hugging Face and MLflow tokens in the environment, a
password in the tracking URI), a run logs to a real tracking server over HTTP, and everything a user
or a colleague could see afterwards is searched for them: stdout and stderr, every param, tag and
metric key of the run, every artifact's bytes, every file the run wrote, and the spool.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient
from mlflow_server import free_port

SCRIPT = Path(sys.executable).with_name("llem-mlflow")
SECRETS = {
    "HF_TOKEN": "hf_PLANTEDsecret0001",
    "HUGGING_FACE_HUB_TOKEN": "hf_PLANTEDsecret0002",
    "MLFLOW_TRACKING_TOKEN": "PLANTED-token-0003",
    "MLFLOW_TRACKING_PASSWORD": "PLANTED-password-0004",
    "AWS_SECRET_ACCESS_KEY": "PLANTED-aws-0005",
}
URI_PASSWORD = "PLANTED-uri-0006"
WORKLOAD = ["--model", "llem/tiny-gpt2", "--weights", "random", "--n", "2", "--max-output-tokens", "2"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "llem_mlflow"]
    env = {**os.environ, **SECRETS, "MLFLOW_TRACKING_USERNAME": "alice"}
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _leaks(blob: bytes | str) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    return [s for s in [*SECRETS.values(), URI_PASSWORD] if s in text]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_logged_run_carries_no_secret_anywhere(mlflow_server: str, tmp_path: Path) -> None:
    uri = mlflow_server.replace("http://", f"http://bob:{URI_PASSWORD}@")
    proc = _run("run", *WORKLOAD, "--baseline-s", "0", "--output-dir", "out", "--tracking-uri", uri,
                "--experiment-name", "secrets", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _leaks(proc.stdout + proc.stderr) == []

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("secrets")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    data = run.data
    assert _leaks(repr(data.params) + repr(data.tags) + repr(sorted(data.metrics))) == []
    downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    artifacts = _files(downloaded)
    assert {Path(name).name for name in artifacts} >= {"result.json", "timeseries.parquet"}
    assert {name: _leaks(blob) for name, blob in artifacts.items() if _leaks(blob)} == {}
    written = _files(tmp_path / "out")
    assert {name: _leaks(blob) for name, blob in written.items() if _leaks(blob)} == {}


def test_an_unreachable_store_with_credentials_leaks_them_nowhere(tmp_path: Path) -> None:
    uri = f"http://bob:{URI_PASSWORD}@127.0.0.1:{free_port()}"
    spool_dir = tmp_path / "spool"
    os.environ["LLEM_MLFLOW_SPOOL_DIR"] = str(spool_dir)  # the fixture set it; the child inherits this one
    proc = _run(
        "run", *WORKLOAD, "--baseline-s", "0", "--output-dir", "out", "--tracking-uri", uri, cwd=tmp_path
    )
    assert proc.returncode == 1 and "spooled" in proc.stderr
    assert _leaks(proc.stdout + proc.stderr) == []
    stored = {**_files(tmp_path / "out"), **_files(spool_dir)}
    assert stored and {name: _leaks(blob) for name, blob in stored.items() if _leaks(blob)} == {}
    bad = _run("log", str(next((tmp_path / "out").iterdir())), "--tracking-uri", uri, cwd=tmp_path)
    assert bad.returncode == 1 and _leaks(bad.stdout + bad.stderr) == []


def test_test_servers_listen_on_loopback_only() -> None:
    root = Path(__file__).resolve().parents[2]
    sources = [*root.joinpath("tests").rglob("*.py"), *root.joinpath("scripts").glob("*.py")]
    wide = [str(p) for p in sources if p != Path(__file__).resolve() and "0.0.0.0" in p.read_text()]
    assert wide == []
    assert '"--host", "127.0.0.1"' in root.joinpath("tests", "mlflow_server.py").read_text()
