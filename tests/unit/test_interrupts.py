"""Ctrl-C / SIGTERM: what was measured is kept, the MLflow run ends KILLED, exit 130; twice exits at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import RunInterrupted
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.results import files as artifacts
from llem_mlflow.run.execute import GpuSet, execute
from tests.fakes import FakeBackend, FakeDevice, ctrl_c_at

SCRIPT = Path(sys.executable).with_name("llem-mlflow")
CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)


def _cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    base: dict[str, object] = dict(
        n=4, batch_size=2, max_input_tokens=4, max_output_tokens=3, cycles=3, baseline_s=0.0,
        output_dir=str(tmp_path / "out"), experiment_name="interrupts", sampling_interval_s=0.005,
    )  # fmt: skip
    return ExperimentConfig.model_validate({**base, **kw})


def test_ctrl_c_in_the_second_cycle_keeps_the_first_and_the_run_ends_killed(tmp_path: Path) -> None:
    # generate calls: 1 warm-up, then 2 batches per cycle: call 4 is the second cycle's first batch
    with pytest.raises(RunInterrupted) as info:
        execute(_cfg(tmp_path), backend=FakeBackend(on_generate=ctrl_c_at(4)), store_probe=lambda c: None)
    message = str(info.value)
    assert "interrupted during cycle 2 of 3: kept 1 of 3 completed cycle(s)" in message
    assert "ended KILLED" in message and "\n" not in message
    (folder,) = (tmp_path / "out").iterdir()
    result = artifacts.read_result_json(folder / "result.json")
    assert result.status == "interrupted" and result.cycles is not None and result.cycles.n == 1
    assert result.output_tokens == 4 * 3  # the completed cycle's tokens only
    assert any("Interrupted during cycle 2 of 3" in w for w in result.warnings)
    assert (folder / "timeseries.parquet").is_file()
    outcome = info.value.outcome
    run = MlflowClient().get_run(outcome.run_id)  # type: ignore[attr-defined]
    assert run.info.status == "KILLED" and run.data.tags["llem.status"] == "interrupted"
    assert run.data.metrics["tokens/output"] == 12


def test_ctrl_c_in_warm_up_keeps_nothing_and_leaves_no_folder(tmp_path: Path) -> None:
    with pytest.raises(RunInterrupted, match="during warm-up: no measured batch had completed; nothing"):
        execute(_cfg(tmp_path), backend=FakeBackend(on_generate=ctrl_c_at(1)), store_probe=lambda c: None)
    assert list((tmp_path / "out").iterdir()) == []
    exp = MlflowClient().get_experiment_by_name("interrupts")
    assert exp is None or MlflowClient().search_runs([exp.experiment_id]) == []


def test_ctrl_c_in_the_gpu_baseline_keeps_the_partial_trace(tmp_path: Path) -> None:
    # counter reads: baseline start, then the baseline's end read is where Ctrl-C lands
    device = FakeDevice(energy_script=[1000.0, KeyboardInterrupt()], power_w=120.0)

    def gpus(ids: Sequence[CudaDeviceId]) -> GpuSet:
        return GpuSet(devices=[device], driver_version="580.159.04")

    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0])
    cfg = _cfg(tmp_path, baseline_s=0.1, idle_settle_max_s=0)
    with pytest.raises(
        RunInterrupted, match="interrupted during idle baseline: no measured batch had completed; kept"
    ):
        execute(cfg, backend=backend, gpus=gpus, store_probe=lambda c: None)
    (folder,) = (tmp_path / "out").iterdir()
    assert [p.name for p in folder.iterdir()] == ["timeseries.parquet"]
    assert artifacts.read_trace_parquet(folder / "timeseries.parquet").samples


# ---------------------------------------------------------------- the real CLI and real signals


def _start(tmp_path: Path) -> subprocess.Popen[str]:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "llem_mlflow"]
    args = ["run", "--model", "llem/tiny-gpt2", "--weights", "random", "--n", "400", "--batch-size", "1",
            "--max-output-tokens", "8", "--cycles", "3", "--baseline-s", "0", "--output-dir", "out",
            "--experiment-name", "interrupts"]  # fmt: skip
    return subprocess.Popen([*command, *args], cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip


def _wait_for(proc: subprocess.Popen[str], text: str, timeout_s: float = 240) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"never saw {text!r}: {''.join(lines)}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_measuring_exits_130_in_one_line_and_keeps_the_result(
    tmp_path: Path, sig: signal.Signals
) -> None:
    proc = _start(tmp_path)
    _wait_for(proc, "measuring 400 prompts")
    time.sleep(1.0)  # inside cycle 1 (400 batches take far longer)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    last = [line for line in err.splitlines() if line.startswith("error:") or "interrupted again" in line]
    assert len(last) == 1 and "during cycle 1 of 3: kept 0 of 3 completed cycle(s) and " in last[0], err
    assert "Traceback" not in err
    (folder,) = (tmp_path / "out").iterdir()  # CPU: the completed batches of cycle 1 (no energy)
    result = artifacts.read_result_json(folder / "result.json")
    assert result.status == "interrupted" and result.cycles is not None
    (record,) = result.cycles.records
    assert record.partial is not None and record.partial.batches == 400
    assert 0 < record.partial.completed_batches < 400
    assert result.output_tokens == record.partial.completed_batches * 8 and result.total_energy_j is None
    assert f"and {record.partial.completed_batches} of 400 batches of cycle 1" in last[0], err


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    _wait_for(proc, "measuring 400 prompts")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted again: exiting now" in err or "interrupted during" in err
    assert json.dumps(err).count("Traceback") == 0


# ---------------------------------------------------------------- after measuring: writing and logging
# tests/hold_stage.py holds the CLI inside one function and says HOLD; the signal is sent then, so it
# lands exactly there (no sleep). A real sqlite store, a real spool, the real CLI.

HOLD_SCRIPT = Path(__file__).resolve().parents[1] / "hold_stage.py"
WRITE = "llem_mlflow.results.files:write_result_json"
LOG = "mlflow.tracking.client:MlflowClient.log_batch"
CYCLE_2 = "llem_mlflow.backends.hf:TransformersBackend.generate@4"  # warm-up 1, 2 batches a cycle
SMALL_RUN = ["run", "--model", "llem/tiny-gpt2", "--weights", "random", "--n", "4", "--batch-size", "2",
             "--max-output-tokens", "4", "--cycles", "3", "--baseline-s", "0", "--output-dir", "out",
             "--experiment-name", "interrupts"]  # fmt: skip


def _held_run(tmp_path: Path, holds: str, signals: Sequence[Sequence[signal.Signals]]) -> tuple[int, str]:
    """Run the CLI with ``holds`` held; at the i-th HOLD line send ``signals[i]``; (exit code, stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLEM_MLFLOW_SPOOL_DIR": str(tmp_path / "spool")}
    proc = subprocess.Popen([sys.executable, str(HOLD_SCRIPT), holds, "--", *SMALL_RUN], cwd=tmp_path,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    assert proc.stderr is not None
    lines, held = [], 0
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("HOLD "):
            for sig in signals[held]:
                proc.send_signal(sig)
            held += 1
    proc.wait(timeout=120)
    assert held == len(signals), "".join(lines)
    return proc.returncode, "".join(lines)


def _error_line(err: str) -> str:
    (line,) = [x for x in err.splitlines() if x.startswith("error:") or "exiting now" in x]
    return line


def _runs(experiment: str = "interrupts") -> list[Any]:
    from mlflow.entities import ViewType

    exp = MlflowClient().get_experiment_by_name(experiment)
    return [] if exp is None else MlflowClient().search_runs([exp.experiment_id], run_view_type=ViewType.ALL)


def _spooled(tmp_path: Path) -> list[Path]:
    return [p.parent for p in (tmp_path / "spool").rglob("spool.json")]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_writing_keeps_result_json_and_spools_it(tmp_path: Path, sig: signal.Signals) -> None:
    code, err = _held_run(tmp_path, WRITE, [[sig]])
    assert code == 130, err
    (folder,) = (tmp_path / "out").iterdir()
    result = artifacts.read_result_json(folder / "result.json")  # the measurement is whole
    assert result.status == "completed" and result.cycles is not None and result.cycles.n == 3
    (entry,) = _spooled(tmp_path)
    assert (entry / "result.json").is_file() and (entry / "timeseries.parquet").is_file()
    line = _error_line(err)
    assert f"interrupted ({sig.name}) while writing the result files: every cycle had completed" in line
    assert f"kept in out/{folder.name} (status: completed; not logged to MLflow)" in line
    assert f"spooled in {entry}; upload it with: llem-mlflow sync" in line
    assert "nothing was measured" not in err and "Traceback" not in err
    assert _runs() == []  # MLflow was never called: no run to leave RUNNING


@pytest.mark.slow
def test_two_signals_while_writing_still_write_result_json_then_exit_with_the_way_back(
    tmp_path: Path,
) -> None:
    code, err = _held_run(tmp_path, WRITE, [[signal.SIGINT, signal.SIGTERM]])
    assert code == 130, err
    (folder,) = (tmp_path / "out").iterdir()
    assert artifacts.read_result_json(folder / "result.json").status == "completed"
    line = _error_line(err)
    assert "exiting now (interrupted twice)" in line and f"`llem-mlflow log out/{folder.name}`" in line


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_logging_spools_the_result_and_ends_the_run_killed(
    tmp_path: Path, sig: signal.Signals
) -> None:
    code, err = _held_run(tmp_path, LOG, [[sig]])
    assert code == 130, err
    (folder,) = (tmp_path / "out").iterdir()
    assert artifacts.read_result_json(folder / "result.json").status == "completed"
    (run,) = _runs()
    assert run.info.status == "KILLED" and run.data.tags["llem.status"] == "logging interrupted"
    (entry,) = _spooled(tmp_path)
    line = _error_line(err)
    assert "interrupted while logging to MLflow: every cycle had completed" in line
    assert f"MLflow run {run.info.run_id} ended KILLED; spooled in {entry}" in line
    assert line.endswith("upload it with: llem-mlflow sync") and "nothing was measured" not in err
    _sync_logs_it_once(tmp_path, run.info.run_id)


def _sync_logs_it_once(tmp_path: Path, cut_run: str) -> None:
    """`llem-mlflow sync` logs the spooled result into one live run and retires the cut one."""
    env = {**os.environ, "LLEM_MLFLOW_SPOOL_DIR": str(tmp_path / "spool")}
    done = subprocess.run([sys.executable, "-m", "llem_mlflow", "sync"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    live = [r for r in _runs() if r.info.lifecycle_stage == "active"]
    assert len(live) == 1 and live[0].info.run_id != cut_run and "tokens/output" in live[0].data.metrics
    assert _spooled(tmp_path) == []


@pytest.mark.slow
def test_a_second_signal_while_logging_an_interrupted_run_cuts_logging_short_and_loses_nothing(
    tmp_path: Path,
) -> None:
    code, err = _held_run(tmp_path, f"{CYCLE_2},{LOG}", [[signal.SIGINT], [signal.SIGINT]])
    assert code == 130, err
    (folder,) = (tmp_path / "out").iterdir()
    result = artifacts.read_result_json(folder / "result.json")
    assert result.status == "interrupted" and result.cycles is not None and result.cycles.n == 1
    (run,) = _runs()
    assert run.info.status == "KILLED" and run.data.tags["llem.status"] == "logging interrupted"
    (entry,) = _spooled(tmp_path)
    line = _error_line(err)
    assert "interrupted during cycle 2 of 3: kept 1 of 3 completed cycle(s)" in line
    assert "logging was cut short" in line and f"spooled in {entry}" in line
    assert line.endswith("upload it with: llem-mlflow sync")
    _sync_logs_it_once(tmp_path, run.info.run_id)


@pytest.mark.slow
def test_under_mlflow_run_the_message_says_what_mlflow_run_makes_of_the_run(tmp_path: Path) -> None:
    """`mlflow run` marks its run FAILED once its entry point exits non-zero (MLflow 3.17 overrides the
    KILLED the entry point set) and exits 1: the line says exactly that, and `sync` logs into that run."""
    root = Path(__file__).resolve().parents[2]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import sys\nsys.path[:0] = [{str(root)!r}, {str(root / 'tests')!r}]\n"
        "import hold_stage\nhold_stage.from_env()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "LLEM_TEST_HOLD": LOG, "HF_HUB_OFFLINE": "1",
           "LLEM_MLFLOW_SPOOL_DIR": str(tmp_path / "spool"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    params = [f"{k}={v}" for k, v in dict(model="llem/tiny-gpt2", weights="random", n=4, batch_size=2,
              max_output_tokens=4, cycles=3, baseline_s=0, output_dir=tmp_path / "out").items()]  # fmt: skip
    cmd = [sys.executable, "-m", "mlflow", "run", str(root), "--env-manager", "local",
           "--experiment-name", "interrupts", *(x for p in params for x in ("-P", p))]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("HOLD "):
            os.kill(int(line.rsplit("pid=", 1)[1]), signal.SIGINT)  # the entry point, as `kill -INT`
    proc.wait(timeout=300)
    err = "".join(lines)
    assert proc.returncode == 1, err  # what `mlflow run` exits with, whatever its entry point did
    (run,) = _runs()
    assert run.info.status == "FAILED", err
    line = _error_line(err)
    assert f"MLflow run {run.info.run_id} ended KILLED, but `mlflow run` marks it FAILED and exits 1" in line
    _sync_logs_it_once(tmp_path, "")
