"""`mlflow run .` end to end on the CPU: one FINISHED run, logged by the entry point into MLflow's run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _mlflow_run(tmp_path: Path, *params: str) -> tuple[subprocess.CompletedProcess[str], str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local"]
    cmd += ["--experiment-name", "mlproject-test", *params]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900, check=False
    )
    return proc, uri


def _only_run(uri: str) -> Any:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("mlproject-test")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    return run


@pytest.mark.slow
def test_mlflow_run_measures_the_yaml_and_only_given_params_override_it(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    cfg = tmp_path / "my.yaml"
    cfg.write_text(
        f"model: gpt2\nn: 3\nbatch_size: 2\nmax_output_tokens: 5\nmax_input_tokens: 8\n"
        f"output_dir: {tmp_path / 'results'}\n"
    )
    proc, uri = _mlflow_run(tmp_path, "-P", f"config={cfg}", "-P", "max_output_tokens=7")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = _only_run(uri)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["tokens/output"] == 3 * 7  # n from the YAML, max_output_tokens from -P
    assert run.data.params["config"] == str(cfg) and run.data.params["max_output_tokens"] == "7"
    assert "''" not in run.data.params.values()  # MLflow logged only what was given, no placeholders
    assert run.data.params["n"] == "3" and run.data.params["model"] == "gpt2"  # ours: what was measured
    assert run.data.tags["llem.energy_source"] == "none"
    assert run.data.tags["llem.weights"] == "random"
    assert "energy/total_j" not in run.data.metrics
    names = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id)}
    assert {"result.json", "timeseries.parquet"} <= names


@pytest.mark.slow
@pytest.mark.parametrize(("param", "field"), [("batch_size=0", "batch_size"), ("colour=red", "colour")])
def test_mlflow_run_with_invalid_param_fails_the_run(tmp_path: Path, param: str, field: str) -> None:
    proc, uri = _mlflow_run(tmp_path, "-P", param)
    assert proc.returncode != 0
    assert field in proc.stderr and "Traceback" not in proc.stderr
    assert _only_run(uri).info.status == "FAILED"
