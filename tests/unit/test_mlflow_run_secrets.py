"""`mlflow run .` against a tracking server whose URI holds credentials: none reach the terminal.

MLflow's parent process (not ours) prints "View run <name> at: <URI>" when the run ends, the URI as
given. Our run context provider, which MLflow loads in that process, turns the line off when
``MLFLOW_TRACKING_URI`` holds credentials (``secrets.quiet_url_printing``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llem_mlflow.secrets import SUPPRESS_URL_VAR, quiet_url_printing

ROOT = Path(__file__).resolve().parents[2]
SECRET = "s3cret-pw"


@pytest.mark.slow
def test_mlflow_run_prints_no_credentials_of_the_tracking_uri(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if k != SUPPRESS_URL_VAR}  # MLflow's line left on
    env["MLFLOW_TRACKING_URI"] = mlflow_server.replace("http://", f"http://alice:{SECRET}@")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local"]
    cmd += ["--experiment-name", "secret-uri", "-P", "n=2", "-P", "max_output_tokens=3"]
    cmd += ["-P", f"output_dir={tmp_path / 'out'}"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "alice" in env["MLFLOW_TRACKING_URI"]
    assert SECRET not in proc.stdout + proc.stderr
    exp = MlflowClient(mlflow_server).get_experiment_by_name("secret-uri")
    assert exp is not None
    (run,) = MlflowClient(mlflow_server).search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize(
    ("uri", "preset", "turned_off"),
    [
        ("http://alice:pw@h:5000", None, True),
        ("https://ghp_TOKEN@h", None, True),
        ("http://h:5000?token=abc", None, True),
        ("http://h:5000", None, False),
        ("sqlite:///x.db", None, False),
        ("", None, False),
        ("http://alice:pw@h:5000", "false", False),  # the user's own choice stands
    ],
)
def test_the_url_line_is_turned_off_only_for_a_uri_with_credentials(
    uri: str, preset: str | None, turned_off: bool
) -> None:
    env = {"MLFLOW_TRACKING_URI": uri}
    if preset is not None:
        env[SUPPRESS_URL_VAR] = preset
    assert quiet_url_printing(env) is turned_off
    assert env.get(SUPPRESS_URL_VAR) == ("true" if turned_off else preset)
