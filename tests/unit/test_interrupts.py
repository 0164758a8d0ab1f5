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

import pytest
from mlflow.tracking import MlflowClient

from llem_mlflow import artifacts
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import RunInterrupted
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.runner import GpuSet, execute
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
