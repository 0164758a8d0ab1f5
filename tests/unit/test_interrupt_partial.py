"""Ctrl-C inside a cycle keeps that cycle's completed batches: a partial cycle, status interrupted, exit 130.

The interrupt is the KeyboardInterrupt that Ctrl-C (or SIGTERM under ``interrupts.graceful``) raises,
here raised by the fake backend's ``generate`` at a chosen batch; energies come from scripted counters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from llem_mlflow.cli import app as cli
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import RunInterrupted
from llem_mlflow.measure import rapl
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.run import execute as runner
from llem_mlflow.run.execute import GpuSet, execute
from tests.fakes import FakeBackend, FakeDevice, ctrl_c_at

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)
REPO = Path(__file__).resolve().parents[2]
# n=8, batch_size=2: 4 batches of 2 rows per cycle, 3 new tokens per row = 6 output tokens per batch
TOKENS_PER_BATCH = 2 * 3


@pytest.fixture(autouse=True)
def _no_rapl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CPU energy counter, whatever this machine has: the window rules below depend on it."""
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", tmp_path / "no-powercap")


def _cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    base: dict[str, object] = dict(
        n=8, batch_size=2, max_input_tokens=4, max_output_tokens=3, cycles=1, baseline_s=0.0,
        output_dir=str(tmp_path / "out"), experiment_name="partial", sampling_interval_s=0.005,
    )  # fmt: skip
    return ExperimentConfig.model_validate({**base, **kw})


def _gpus(*devices: FakeDevice) -> Callable[[Sequence[CudaDeviceId]], GpuSet]:
    return lambda ids: GpuSet(devices=list(devices), driver_version="580.159.04")


def _kept(tmp_path: Path) -> ExperimentResult:
    (folder,) = (tmp_path / "out").iterdir()
    assert (folder / "timeseries.parquet").is_file()
    return artifacts.read_result_json(folder / "result.json")


def _killed_run(result: ExperimentResult) -> Any:
    exp = MlflowClient().get_experiment_by_name("partial")
    assert exp is not None
    (run,) = MlflowClient().search_runs([exp.experiment_id])
    assert run.info.status == "KILLED" and run.data.tags["llem.status"] == "interrupted"
    assert run.data.tags["llem.experiment_id"] == result.experiment_id
    return run


def test_ctrl_c_in_the_only_cycle_keeps_its_completed_batches_and_their_energy(tmp_path: Path) -> None:
    # generate calls: 1 warm-up, then batches 1-4: call 4 is batch 3, so batches 1 and 2 completed.
    # Counter reads: the window's start (1000 J) and its end, read after batch 3 was abandoned (1300 J).
    device = FakeDevice(energy_script=[1000.0, 1300.0], power_w=150.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=ctrl_c_at(4))
    with pytest.raises(RunInterrupted) as info:
        execute(_cfg(tmp_path), backend=backend, gpus=_gpus(device), store_probe=lambda c: None)
    message = str(info.value)
    assert "during cycle 1 of 1: kept 0 of 1 completed cycle(s) and 2 of 4 batches of cycle 1" in message
    assert "ended KILLED" in message and "\n" not in message
    assert device.energy_reads == 2 and backend.sync_calls >= 3  # synced at both edges
    r = _kept(tmp_path)
    assert r.status == "interrupted"
    assert r.output_tokens == 2 * TOKENS_PER_BATCH  # the completed batches only
    assert r.total_energy_j == 300.0  # the counter over the partial window
    assert r.avg_energy_per_token_j == pytest.approx(300.0 / 12)
    assert r.cycles is not None and r.cycles.n == 1
    (record,) = r.cycles.records
    partial = record.partial
    assert partial is not None and (partial.completed_batches, partial.batches) == (2, 4)
    assert partial.abandoned_s >= 0.0  # the abandoned batch's start to the end edge
    assert record.gross_j == 300.0 and record.output_tokens == 12
    assert any("2 of 4 batches of cycle 1, kept as a partial cycle" in w for w in r.warnings)
    run = _killed_run(r)
    assert run.data.metrics["tokens/output"] == 12 and run.data.metrics["energy/total_j"] == 300.0


def test_ctrl_c_on_cpu_keeps_tokens_and_time_and_ends_the_window_where_the_abandoned_batch_began(
    tmp_path: Path,
) -> None:
    with pytest.raises(RunInterrupted, match="kept 0 of 1 completed cycle.s. and 3 of 4 batches"):
        execute(_cfg(tmp_path), backend=FakeBackend(on_generate=ctrl_c_at(5)), store_probe=lambda c: None)
    r = _kept(tmp_path)
    assert r.status == "interrupted" and r.output_tokens == 3 * TOKENS_PER_BATCH
    assert r.total_energy_j is None and r.energy is None  # no GPU: no energy, but the batches are kept
    assert r.cycles is not None
    (record,) = r.cycles.records
    p = record.partial
    assert p is not None and (p.completed_batches, p.batches, p.abandoned_s) == (3, 4, 0.0)
    assert r.total_inference_time_sec == pytest.approx(record.duration_s) and record.duration_s > 0
    assert r.avg_tokens_per_second == pytest.approx(18 / record.duration_s)
    _killed_run(r)


def test_steady_state_ends_a_cut_cycle_at_the_counter_read_where_the_abandoned_batch_began(
    tmp_path: Path,
) -> None:
    # Counter reads: start 1000, before batch 2: 1100, before batch 3: 1250; batch 3 is abandoned.
    device = FakeDevice(energy_script=[1000.0, 1100.0, 1250.0], power_w=150.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=ctrl_c_at(4))
    cfg = _cfg(tmp_path, measurement_methodology="steady_state", mlflow=False)
    with pytest.raises(RunInterrupted, match="2 of 4 batches of cycle 1"):
        execute(cfg, backend=backend, gpus=_gpus(device), store_probe=lambda c: None)
    r = _kept(tmp_path)
    assert device.energy_reads == 3  # no read after the cut: the edge before batch 3 is the end
    assert r.total_energy_j == 250.0 and r.output_tokens == 12
    assert r.cycles is not None and r.cycles.records[0].partial is not None
    assert r.cycles.records[0].partial.abandoned_s == 0.0


def test_ctrl_c_while_the_end_edge_is_read_keeps_the_whole_cycle(tmp_path: Path) -> None:
    # Every batch completed; Ctrl-C lands in the end edge's counter read, which is then read again.
    device = FakeDevice(energy_script=[1000.0, KeyboardInterrupt(), 1400.0], power_w=150.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0])
    with pytest.raises(RunInterrupted, match=r"kept 1 of 1 completed cycle\(s\) in "):
        execute(_cfg(tmp_path, mlflow=False), backend=backend, gpus=_gpus(device), store_probe=lambda c: None)
    r = _kept(tmp_path)
    assert r.output_tokens == 4 * TOKENS_PER_BATCH and r.total_energy_j == 400.0
    assert r.cycles is not None and r.cycles.records[0].partial is None


def test_a_partial_cycle_is_kept_but_left_out_of_the_intervals(tmp_path: Path) -> None:
    # cycles 1 and 2 complete (calls 2-9), cycle 3 stops in its second batch (call 11)
    device = FakeDevice(energy_script=[0.0, 400.0, 1000.0, 1400.0, 2000.0, 2150.0], power_w=150.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=ctrl_c_at(11))
    cfg = _cfg(tmp_path, cycles=3, mlflow=False)
    with pytest.raises(RunInterrupted, match="kept 2 of 3 completed cycle.s. and 1 of 4 batches of cycle 3"):
        execute(cfg, backend=backend, gpus=_gpus(device), store_probe=lambda c: None)
    r = _kept(tmp_path)
    assert r.output_tokens == (4 + 4 + 1) * TOKENS_PER_BATCH and r.total_energy_j == 950.0
    c = r.cycles
    assert c is not None and c.n == 3 and [x.partial is not None for x in c.records] == [False, False, True]
    assert c.gross_j_ci95 is not None and c.gross_j_ci95.values == [400.0, 400.0]  # not the cut cycle's 150
    assert c.duration_s_ci95.n == 2 and c.output_tokens_per_s_ci95.n == 2


def test_the_cli_exits_130_and_keeps_the_partial_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = FakeDevice(energy_script=[1000.0, 1300.0], power_w=150.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=ctrl_c_at(4))
    monkeypatch.setattr(runner, "_default_backend", lambda cfg: backend)
    monkeypatch.setattr(runner, "_nvml_gpus", _gpus(device))
    args = ["run", "--n", "8", "--batch-size", "2", "--max-input-tokens", "4", "--max-output-tokens", "3",
            "--baseline-s", "0", "--output-dir", str(tmp_path / "out"),
            "--experiment-name", "partial"]  # fmt: skip
    result = CliRunner().invoke(cli.app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 130, result.output
    assert "kept 0 of 1 completed cycle(s) and 2 of 4 batches of cycle 1" in result.output
    r = _kept(tmp_path)
    assert r.status == "interrupted" and r.output_tokens == 12 and r.total_energy_j == 300.0
    _killed_run(r)


# ---------------------------------------------------------------- a second Ctrl-C while keeping

_SECOND_CTRL_C = """
    import os, signal
    from llem_mlflow.measure import rapl
    from llem_mlflow.config import ExperimentConfig
    from llem_mlflow.interrupts import graceful
    from llem_mlflow.protocols import CudaDeviceId
    from llem_mlflow.run.execute import GpuSet, execute
    from tests.fakes import FakeBackend, FakeDevice

    rapl.POWERCAP_ROOT = rapl.POWERCAP_ROOT / "absent"
    calls = {"generate": 0, "energy": 0}

    def on_generate():  # the first Ctrl-C: a real SIGINT inside batch 3 of the only cycle
        calls["generate"] += 1
        if calls["generate"] == 4:
            os.kill(os.getpid(), signal.SIGINT)

    def energy():  # the second Ctrl-C: while the end edge's counters are read after the cut
        calls["energy"] += 1
        if calls["energy"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            return 1300.0
        return 1000.0

    cfg = ExperimentConfig(n=8, batch_size=2, max_input_tokens=4, max_output_tokens=3, baseline_s=0.0,
                           output_dir=OUT, mlflow=False, sampling_interval_s=0.005)
    backend = FakeBackend(device="cuda", cuda_devices=[CudaDeviceId(0, "GPU-fake-0", None)],
                          on_generate=on_generate)
    with graceful():
        execute(cfg, backend=backend, gpus=lambda ids: GpuSet([FakeDevice(energy_script=energy)], "580"),
                store_probe=lambda c: None)
    print("NOT REACHED")
"""


@pytest.mark.slow
def test_a_second_ctrl_c_while_the_counters_are_read_waits_for_the_files(tmp_path: Path) -> None:
    code = f"OUT = {str(tmp_path / 'out')!r}\n" + textwrap.dedent(_SECOND_CTRL_C)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 130, proc.stderr
    assert "NOT REACHED" not in proc.stdout
    assert "interrupted again: exiting once what was measured is written" in proc.stderr
    assert "exiting now (interrupted twice)" in proc.stderr and "Traceback" not in proc.stderr
    (folder,) = (tmp_path / "out").iterdir()
    data = json.loads((folder / "result.json").read_text())
    assert data["status"] == "interrupted" and data["output_tokens"] == 12 and data["total_energy_j"] == 300.0


_KEEPING = """
    import os, signal, sys
    from pathlib import Path
    from llem_mlflow import interrupts

    PRESSES = int(sys.argv[1])
    with interrupts.graceful():
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C stops the run
        except KeyboardInterrupt:
            with interrupts.keeping():  # keeping what was measured
                with interrupts.keeping():  # blocks nest: only the outermost end exits
                    for _ in range(PRESSES - 1):
                        os.kill(os.getpid(), signal.SIGINT)
                Path(OUT).write_text("kept")
    print("ENDED NORMALLY")
"""


@pytest.mark.parametrize(("presses", "kept"), [(2, True), (3, False)])
def test_a_second_signal_waits_for_keeping_and_a_third_exits_at_once(
    tmp_path: Path, presses: int, kept: bool
) -> None:
    out = tmp_path / "kept.txt"
    code = f"OUT = {str(out)!r}\n" + textwrap.dedent(_KEEPING)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(presses)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 130 and "ENDED NORMALLY" not in proc.stdout, proc.stderr
    assert out.exists() is kept
    assert "interrupted again: exiting once what was measured is written" in proc.stderr
    if kept:
        assert "exiting now (interrupted twice)" in proc.stderr
    else:
        assert "interrupted again: exiting now" in proc.stderr


# ---------------------------------------------------------------- "1 batch", not "1 batches"


class _Stages:
    def __init__(self) -> None:
        self.messages: list[str] = []

    def stage(self, message: str) -> None:
        self.messages.append(message)

    def batch(self, phase: str, done: int, total: int) -> None:
        pass


def test_stage_messages_count_one_batch_and_one_prompt_in_the_singular(tmp_path: Path) -> None:
    stages = _Stages()
    cfg = _cfg(tmp_path, n=1, batch_size=1, mlflow=False)
    r = execute(cfg, backend=FakeBackend(), progress=stages, store_probe=lambda c: None).result
    assert "measuring 1 prompt in 1 batch" in stages.messages
    assert "warm-up: 1 batch" in stages.messages
    assert r.warmup is not None and r.warmup.rule == "fixed: 1 batch"
    assert not [m for m in stages.messages if "1 batches" in m or "1 prompts" in m or "(es)" in m]
    stages.messages.clear()
    execute(_cfg(tmp_path, mlflow=False), backend=FakeBackend(), progress=stages, store_probe=lambda c: None)
    assert "measuring 8 prompts in 4 batches" in stages.messages
