"""The real CLI's exit codes and messages for invalid input (no model is loaded for these)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("llem-mlflow")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed `llem-mlflow` script (``python -m llem_mlflow`` where it is not installed)."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "llem_mlflow"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--batch-size", "0"], "batch_size"),
        (["--precision", "fp8"], "precision"),
        (["--weights", "maybe"], "weights"),
        (["--n", "many"], "n"),
        (["--baseline-s", "1s"], "baseline_s"),
    ],
)
def test_invalid_flag_exits_2_with_one_line(tmp_path: Path, args: list[str], field: str) -> None:
    proc = cli("run", "--model", "gpt2", *args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid config: {field}:"), proc.stderr
    assert not (tmp_path / "mlflow.db").exists(), "no MLflow run may be started for an invalid config"


def test_mlflow_run_style_empty_values_are_unset(tmp_path: Path) -> None:
    # `mlflow run` passes '' for every parameter the user left out: each means "use the YAML or default".
    empty = ["--model", "", "--backend", "", "--n", "", "--precision", "", "--max-input-tokens", ""]
    empty += ["--max-output-tokens", "", "--weights", "", "--device", "", "--baseline-s", ""]
    proc = cli("run", "", *empty, "--batch-size", "0", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid config: batch_size:"), proc.stderr


def test_mlflow_run_style_underscore_keys(tmp_path: Path) -> None:
    # Undeclared `-P key=value` parameters reach the command as `--key value`, spelled as given.
    (tmp_path / "c.yaml").write_text("model: gpt2\nn: 4\n")
    proc = cli("run", "--config", "c.yaml", "--max_output_tokens", "7", "--batch_size", "0", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: invalid config: batch_size: Input should be greater than or equal to 1"
    ]
    unknown = cli("run", "--colour", "red", cwd=tmp_path)
    assert unknown.returncode == 2 and "colour" in unknown.stderr and "Traceback" not in unknown.stderr


def test_unknown_yaml_key_exits_2(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("model: gpt2\nbatchsize: 2\n")
    proc = cli("run", "c.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: invalid config: batchsize: unknown field")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_version(tmp_path: Path) -> None:
    from llem_mlflow import __version__

    proc = cli("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"llem-mlflow {__version__}"


def test_config_command_without_gpu(tmp_path: Path) -> None:
    proc = cli("config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "energy source   none" in proc.stdout and "torch" in proc.stdout


def test_unreachable_tracking_server_keeps_files_and_log_recovers(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow_server import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    proc = cli(
        "run",
        "--model",
        "llem/tiny-gpt2",
        "--weights",
        "random",
        "--n",
        "2",
        "--max-output-tokens",
        "2",
        "--baseline-s",
        "0",
        "--output-dir",
        "out",
        "--tracking-uri",
        dead,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    assert "upload everything spooled with: llem-mlflow sync" in proc.stderr
    (folder,) = (tmp_path / "out").iterdir()
    assert (folder / "result.json").is_file() and (folder / "timeseries.parquet").is_file()
    uri = f"sqlite:///{tmp_path / 'later.db'}"
    logged = cli("log", str(folder), "--tracking-uri", uri, "--experiment-name", "later", cwd=tmp_path)
    assert logged.returncode == 0, logged.stderr
    run_id = logged.stdout.split()[-1]
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["llem.experiment_id"] == folder.name
