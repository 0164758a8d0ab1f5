"""Uncertainty arithmetic and quality flags reaching the result, MLflow tags and warnings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llem_mlflow import assess
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.protocols import CudaDeviceId, SlowReading
from llem_mlflow.result import EnergyBreakdown, GpuEnergy
from llem_mlflow.runner import GpuSet, execute
from llem_mlflow.trace import PowerTrace, TraceSample
from tests.fakes import FakeBackend, FakeDevice

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)


def _breakdown() -> EnergyBreakdown:
    gpu = GpuEnergy(cuda_index=0, uuid="GPU-0", gross_j=1000.0, idle_power_w=100.0, net_j=700.0)
    return EnergyBreakdown(
        gross_j=1000.0, idle_power_w=100.0, idle_duration_s=1.0, net_j=700.0, edge_uncertainty_j=20.0,
        per_gpu=[gpu],
    )  # fmt: skip


def test_net_uncertainty_adds_window_edges_idle_edges_and_gain() -> None:
    idle = [TraceSample(timestamp_s=10.0 + i * 0.1, gpu=0, power_w=100.0) for i in range(11)]
    trace = PowerTrace(interval_s=0.1, samples=idle)
    u = assess.uncertainty(_breakdown(), trace, (10.0, 11.0), measured_s=3.0, gain_pct=5.0)
    # idle edges: 2 edges x 100 W x 0.1 s = 20 J over a 1 s baseline = 20 W, over 3 s measured = 60 J
    assert u.idle_edges_j == pytest.approx(60.0)
    assert u.net_j == pytest.approx(20.0 + 60.0 + 0.05 * 700.0)
    assert u.gross_j == pytest.approx(20.0 + 0.05 * 1000.0)
    assert assess.median_power_w(trace, [0], (10.0, 11.0)) == 100.0
    assert assess.median_power_w(trace, [0], (20.0, 21.0)) is None


def _gpu_run(tmp_path: Path, slow: SlowReading, counter: list[float]) -> object:
    cfg = ExperimentConfig(n=4, batch_size=2, max_input_tokens=6, max_output_tokens=4, baseline_s=0.05,
                           sampling_interval_s=0.002, output_dir=str(tmp_path / "o"),
                           mlflow=False)  # fmt: skip
    device = FakeDevice(energy_script=counter, power_w=150.0, slow=slow)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=lambda: time.sleep(0.03))
    return execute(cfg, backend=backend, gpus=lambda ids: GpuSet([device], "580"), store_probe=lambda c: None)


def test_throttling_and_a_tiny_net_energy_are_flagged(tmp_path: Path) -> None:
    hot = SlowReading(temperature_c=80.0, sm_clock_mhz=1000.0, utilization_pct=99.0, memory_used_b=1,
                      throttle_reasons=0x20)  # fmt: skip  # SW thermal slowdown
    r = _gpu_run(tmp_path, hot, [0.0, 10.0, 100.0, 101.0]).result  # type: ignore[attr-defined]
    assert "throttling" in r.quality_flags and "net_below_uncertainty" in r.quality_flags
    assert r.quality_flags["throttling"] in r.warnings
    assert r.mlflow_tags()["llem.quality.throttling"] == r.quality_flags["throttling"]
    assert r.uncertainty is not None and r.uncertainty.idle_after_w == pytest.approx(150.0)
    assert r.windows["idle_after"].start_s >= r.windows["measure"].end_s


def test_a_clean_run_has_no_flags(tmp_path: Path) -> None:
    cool = SlowReading(temperature_c=40.0, sm_clock_mhz=1980.0, utilization_pct=99.0, memory_used_b=1,
                       throttle_reasons=0)  # fmt: skip
    # 0.05 s idle costs ~0.0 J here; 1000 J over the window is far above every bound and the ceiling
    r = _gpu_run(tmp_path, cool, [0.0, 0.0, 100.0, 1100.0]).result  # type: ignore[attr-defined]
    flags = set(r.quality_flags) - {"short_window", "energy_per_token_out_of_bounds"}
    assert flags == set(), r.quality_flags
