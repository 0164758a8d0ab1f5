"""`mlflow run .` end to end on the CPU: one FINISHED run, logged by the entry point into MLflow's run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _mlflow_run(tmp_path: Path, *params: str) -> tuple[subprocess.CompletedProcess[str], str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'results'}\n")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(ROOT),
        "--env-manager",
        "local",
        "--experiment-name",
        "mlproject-test",
        "-P",
        f"config={cfg}",
        *params,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900, check=False
    )
    return proc, uri


@pytest.mark.slow
def test_mlflow_run_logs_into_its_own_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    proc, uri = _mlflow_run(
        tmp_path, "-P", "model=gpt2", "-P", "n=4", "-P", "max_output_tokens=8", "-P", "batch_size=2"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("mlproject-test")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model"] == "gpt2" and run.data.params["n"] == "4"
    assert run.data.params["max_output_tokens"] == "8" and run.data.params["seed"] == "42"
    assert run.data.tags["llem.energy_source"] == "none"
    assert run.data.tags["llem.weights"] == "random"
    assert run.data.metrics["tokens/output"] == 32.0
    assert "energy/total_j" not in run.data.metrics
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"result.json", "timeseries.parquet"} <= names


@pytest.mark.slow
def test_mlflow_run_with_invalid_param_fails_the_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    proc, uri = _mlflow_run(tmp_path, "-P", "batch_size=0")
    assert proc.returncode != 0
    assert "batch_size" in proc.stderr
    (run,) = MlflowClient(tracking_uri=uri).search_runs(
        [MlflowClient(tracking_uri=uri).get_experiment_by_name("mlproject-test").experiment_id]
    )
    assert run.info.status == "FAILED"
