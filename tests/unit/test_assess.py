"""Uncertainty arithmetic and quality flags reaching the result, MLflow tags and warnings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.figures import quality
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from llem_mlflow.protocols import CudaDeviceId, GpuInfo, SlowReading
from llem_mlflow.results import assess
from llem_mlflow.results.schema import EnergyBreakdown, GpuEnergy
from llem_mlflow.run.execute import GpuSet, execute
from tests.fakes import FakeBackend, FakeDevice, PoweredGpu

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
    # A plausible board: 100 W idle, 400 W (limit 700 W) in each of 4 batches of 0.3 s, its counter the
    # integral of that power. Window ~1.2 s (>= 10 counter updates); net ~360 J against a bound of at most
    # ~150 J (edges 2 x 400 W x 0.1 s, idle edges 2 x 100 W x 0.1 s / 0.5 s x 1.2 s, 5 % gain);
    # ~15 J/token under the ceiling 700 W x 1.2 s / 32 tokens x 1.05 = 27.6 J; idle 100 W before and after.
    cool = SlowReading(temperature_c=40.0, sm_clock_mhz=1980.0, utilization_pct=99.0, memory_used_b=1,
                       throttle_reasons=0)  # fmt: skip
    board = PoweredGpu(idle_w=100.0, busy_w=400.0, busy_s=0.3, slow=cool)
    cfg = ExperimentConfig(n=4, batch_size=1, max_input_tokens=6, max_output_tokens=8, baseline_s=0.5,
                           sampling_interval_s=0.005, output_dir=str(tmp_path / "o"),
                           mlflow=False)  # fmt: skip
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=board.busy)
    gpu_set = GpuSet([board.device], "580")
    r = execute(cfg, backend=backend, gpus=lambda ids: gpu_set, store_probe=lambda c: None).result
    assert r.total_energy_j is not None and r.energy is not None and r.energy.net_j is not None
    assert r.quality_flags == {}, r.quality_flags
    assert not any(key.startswith("llem.quality.") for key in r.mlflow_tags())


# other_processes: NVML's process count per sample, less this process -----------------------------

WINDOWS = [(10.0, 12.0), (20.0, 22.0)]


def _infos() -> list[GpuInfo]:
    return [FakeDevice(cuda_index=i, uuid=f"GPU-fake-{i}").info for i in (0, 1)]


def _counted(counts: dict[tuple[int, float], int | None]) -> PowerTrace:
    """One sample per (gpu, time) with that count; every second from 9 s to 23 s for GPUs 0 and 1."""
    samples = [
        TraceSample(timestamp_s=float(t), gpu=gpu, power_w=100.0, compute_processes=counts.get((gpu, t), 1))
        for gpu in (0, 1)
        for t in range(9, 24)
    ]
    return PowerTrace(interval_s=1.0, samples=samples)


def _other_processes(trace: PowerTrace) -> int | None:
    inputs = assess.quality_inputs(
        breakdown=None, unc=None, trace=trace, infos=_infos(), windows=WINDOWS,
        idle_before_w=None, idle_after_w=None, output_tokens=100,
    )  # fmt: skip
    return inputs.other_processes


@pytest.mark.parametrize(
    ("counts", "others"),
    [
        ({}, 0),  # only this process, everywhere
        ({(1, 21): 2}, 1),  # a second process on GPU 1 inside the second window
        ({(0, 11): 3, (1, 20): 2}, 2),  # the most any one sample saw, not a sum
        ({(0, 10): 0, (0, 11): 0}, 0),  # NVML lists nothing (a container): cannot tell, 0 others
        ({(0, 9): 4, (1, 15): 5, (0, 23): 3}, 0),  # before, between and after the windows: ignored
    ],
)
def test_other_processes_counts_inside_the_windows(counts: dict[tuple[int, float], int], others: int) -> None:
    assert _other_processes(_counted(counts)) == others


def test_other_processes_unknown_without_any_count() -> None:
    trace = _counted({(gpu, t): None for gpu in (0, 1) for t in range(9, 24)})
    assert _other_processes(trace) is None
    old = PowerTrace(interval_s=1.0, samples=[TraceSample(timestamp_s=11.0, gpu=0, power_w=1.0)])
    assert _other_processes(old) is None


def test_a_process_seen_only_during_idle_does_not_fire() -> None:
    others = _other_processes(_counted({(0, 9): 2, (1, 23): 2}))
    assert others == 0
    inputs = quality.QualityInputs(window_s=4.0, output_tokens=1, other_processes=others)
    assert "other_processes" not in {f.name for f in quality.evaluate(inputs)}


@pytest.mark.parametrize(("count", "fires"), [(2, True), (1, False), (None, False)])
def test_other_processes_flag_reaches_the_result(tmp_path: Path, count: int | None, fires: bool) -> None:
    cool = SlowReading(temperature_c=40.0, sm_clock_mhz=1980.0, utilization_pct=99.0, memory_used_b=1,
                       throttle_reasons=0, compute_processes=count)  # fmt: skip
    r = _gpu_run(tmp_path, cool, [0.0, 0.0, 100.0, 1100.0]).result  # type: ignore[attr-defined]
    assert ("other_processes" in r.quality_flags) is fires, r.quality_flags
    if fires:
        message = r.quality_flags["other_processes"]
        assert "up to 1 compute process(es) besides this one" in message and message in r.warnings
        assert r.mlflow_tags()["llem.quality.other_processes"] == message
