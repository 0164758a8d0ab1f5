"""No secret reaches a param, tag, artifact, log line, error message or file: the real CLI end to end.

Secrets are planted where users keep them (Hugging Face and MLflow tokens in the environment, a
password or a token in the tracking URI, plain or percent-encoded, a database password), a run logs to
a real tracking server over HTTP, and everything a user or a colleague could see afterwards is searched
for them: stdout and stderr (MLflow's own "View run at <URI>" line left on, as users have it), every
param, tag and metric key of the run, every artifact's bytes, every file the run wrote, and the spool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
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
#: Further secrets written into tracking URIs (the raw and the percent-decoded forms must both stay out).
URI_SECRETS = ["PLANTED%40uri%2F0007", "PLANTED@uri/0007", "PLANTED-token-0008", "PLANTED%2Fdb-0009",
               "PLANTED/db-0009"]  # fmt: skip
#: How the credentials are written into the server's URI: a password, a percent-encoded one, a token.
USER_PARTS = [f"bob:{URI_PASSWORD}@", "bob:PLANTED%40uri%2F0007@", "PLANTED-token-0008@"]
WORKLOAD = ["--model", "llem/tiny-gpt2", "--weights", "random", "--n", "2", "--max-output-tokens", "2"]


def _run(*args: str, cwd: Path, **env_extra: str) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "llem_mlflow"]
    env = {**os.environ, **SECRETS, "MLFLOW_TRACKING_USERNAME": "alice", **env_extra}
    env.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)  # MLflow prints "View run at <URI>", as for users
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _leaks(blob: bytes | str) -> list[str]:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    return [s for s in [*SECRETS.values(), URI_PASSWORD, *URI_SECRETS] if s in text]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("user_part", USER_PARTS)
def test_a_logged_run_carries_no_secret_anywhere(mlflow_server: str, tmp_path: Path, user_part: str) -> None:
    uri = mlflow_server.replace("http://", f"http://{user_part}")
    experiment = f"secrets-{USER_PARTS.index(user_part)}"
    proc = _run("run", *WORKLOAD, "--baseline-s", "0", "--output-dir", "out", "--tracking-uri", uri,
                "--experiment-name", experiment, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _leaks(proc.stdout + proc.stderr) == []
    assert f"at: {mlflow_server}/#/experiments/" in proc.stdout  # MLflow's "View run at" line, scrubbed

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(experiment)
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


def test_a_database_uri_spools_with_its_user_and_without_its_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: the result is spooled
    uri = f"postgresql+psycopg2://bob:PLANTED%2Fdb-0009@127.0.0.1:{port}/mlflow"
    spool_dir = tmp_path / "spool"
    os.environ["LLEM_MLFLOW_SPOOL_DIR"] = str(spool_dir)  # the fixture set it; the child inherits this one
    proc = _run(
        "run", *WORKLOAD, "--baseline-s", "0", "--output-dir", "out", "--tracking-uri", uri, cwd=tmp_path
    )
    assert proc.returncode == 1 and "spooled" in proc.stderr
    assert _leaks(proc.stdout + proc.stderr) == []
    (manifest,) = spool_dir.rglob("spool.json")
    assert json.loads(manifest.read_text())["target"]["tracking_uri"] == (
        f"postgresql+psycopg2://bob@127.0.0.1:{port}/mlflow"  # the user stays: sync logs in as bob
    )
    stored = {**_files(tmp_path / "out"), **_files(spool_dir)}
    assert {name: _leaks(blob) for name, blob in stored.items() if _leaks(blob)} == {}
    synced = _run("sync", cwd=tmp_path, MLFLOW_TRACKING_URI=uri)  # the password comes back from here
    assert synced.returncode == 1 and f"postgresql+psycopg2://bob@127.0.0.1:{port}/mlflow" in synced.stdout
    assert _leaks(synced.stdout + synced.stderr) == []


def test_test_servers_listen_on_loopback_only() -> None:
    root = Path(__file__).resolve().parents[2]
    sources = [*root.joinpath("tests").rglob("*.py"), *root.joinpath("scripts").glob("*.py")]
    wide = [str(p) for p in sources if p != Path(__file__).resolve() and "0.0.0.0" in p.read_text()]
    assert wide == []
    assert '"--host", "127.0.0.1"' in root.joinpath("tests", "mlflow_server.py").read_text()
