"""NVML faults injected through fakes: each rule of docs/reliability/nvml-faults.md, then whole runs.

Faults: a read that errors or is NotSupported mid-run, a counter that goes backwards or wraps, a GPU
that is lost, and a MIG GPU. No fault may crash a run or leave a wrong energy without a warning; whole
runs are checked down to each cycle's record, the intervals, the flags and what MLflow received.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import DeviceError
from llem_mlflow.measure.device import DeviceLostError
from llem_mlflow.measure.energy import (
    COUNTER_WRAP_J,
    READ_ATTEMPTS,
    CounterWindow,
    build_breakdown,
    fault_warnings,
    measure_window,
    read_start,
    sparse_trace_warnings,
    sum_breakdowns,
)
from llem_mlflow.measure.sampler import PowerSampler
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.results.schema import CycleRecord, ExperimentResult, GpuEnergy
from llem_mlflow.run.execute import GpuSet, Outcome, _nvml_gpus, execute
from tests.fakes import FakeBackend, FakeDevice, FakeGpu, FakeNvml, FakeNVMLError

NOT_SUPPORTED = DeviceError("Reading the power of GPU 0 (Fake GPU) failed: Not Supported.")
UNKNOWN = DeviceError("Reading the energy counter of GPU 0 (Fake GPU) failed: Unknown Error.")
CUDA = [CudaDeviceId(0, "GPU-fake-0", None), CudaDeviceId(1, "GPU-fake-1", None)]


def clock(times: Iterable[float]) -> Callable[[], float]:
    values = iter(times)
    return lambda: next(values)


def window_of(*devices: FakeDevice, allow_unknown: bool = True) -> CounterWindow:
    _, window = measure_window(
        devices, lambda: None, lambda: None, clock([0.0, 1.0]), allow_unknown=allow_unknown
    )
    return window


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


# --- NvmlDevice: NVML_ERROR_GPU_IS_LOST becomes DeviceLostError ---


class FakeLostError(FakeNVMLError):
    value = 15  # NVML_ERROR_GPU_IS_LOST, as pynvml's NVMLError subclasses carry it

    def __str__(self) -> str:
        return "GPU is lost"


class LosingNvml(FakeNvml):
    """Energy and power reads fail: with GPU-is-lost when ``lost``, else with a plain NVML error."""

    lost = True

    def _fail(self) -> None:
        raise FakeLostError() if self.lost else FakeNVMLError("Unknown Error")

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        self._fail()
        return 0

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        self._fail()
        return 0


def test_nvml_gpu_is_lost_raises_device_lost_error_other_errors_do_not() -> None:
    nvml = LosingNvml([FakeGpu(uuid="GPU-aaaa", bus_id="00000000:19:00.0", power_instant_mw=None)])
    gpu_set = _nvml_gpus([CudaDeviceId(0, "GPU-aaaa", None)], nvml=nvml)
    (device,) = gpu_set.devices
    for read in (device.energy_j, device.power_w):
        with pytest.raises(DeviceLostError, match="lost"):
            read()
    nvml.lost = False
    for read in (device.energy_j, device.power_w):
        with pytest.raises(DeviceError, match="Unknown Error") as caught:
            read()
        assert not isinstance(caught.value, DeviceLostError)
    gpu_set.close()


# --- Sampler: failed power reads are counted; a lost GPU is not read again ---


def test_power_reads_failing_mid_run_are_counted_and_sampling_goes_on() -> None:
    calls = 0

    def every_third_fails() -> float:
        nonlocal calls
        calls += 1
        if calls % 3 == 0:
            raise NOT_SUPPORTED
        return 100.0

    device = FakeDevice(power_w=every_third_fails)
    sampler = PowerSampler([device], interval_s=0.001)
    sampler.start()
    wait_until(lambda: device.power_reads >= 30)
    trace = sampler.stop()
    failed = device.power_reads // 3
    assert len(trace.samples) == device.power_reads - failed
    assert sampler.warnings == [
        f"Power sampler: {failed} of {device.power_reads} power readings of GPU 0 failed (first error: "
        f"{NOT_SUPPORTED}); those samples are missing from the trace."
    ]


def test_lost_gpu_is_not_sampled_again_and_the_others_go_on() -> None:
    good = FakeDevice(cuda_index=0)
    lost = FakeDevice(cuda_index=1, uuid="GPU-fake-1")
    sampler = PowerSampler([good, lost], interval_s=0.001)
    sampler.start()
    wait_until(lambda: lost.power_reads >= 3)
    lost.lose()
    wait_until(lambda: any("was lost" in w for w in sampler.warnings))
    reads_when_lost = lost.power_reads
    good_reads = good.power_reads
    wait_until(lambda: good.power_reads >= good_reads + 20)
    trace = sampler.stop()
    assert lost.power_reads == reads_when_lost  # never read again, not even by stop()
    assert len(trace.for_gpu(0)) == good.power_reads and len(trace.for_gpu(1)) == reads_when_lost - 1
    assert len(sampler.warnings) == 1 and "GPU 1 was lost" in sampler.warnings[0]


# --- Counter reads at window edges: retried, then unknown ---


def test_counter_read_errors_are_retried_at_the_edge() -> None:
    device = FakeDevice(energy_script=[100.0, UNKNOWN, UNKNOWN, 150.0])
    window = window_of(device, allow_unknown=False)
    assert window.energy_j == {0: 50.0} and window.unknown == {}
    assert device.energy_reads == 4


def test_counter_read_failing_every_attempt_makes_that_gpu_unknown() -> None:
    good = FakeDevice(cuda_index=0, energy_script=[1000.0, 1500.0])
    bad = FakeDevice(cuda_index=1, uuid="GPU-fake-1", energy_script=[50.0, *[UNKNOWN] * READ_ATTEMPTS])
    window = window_of(good, bad)
    assert window.energy_j == {0: 500.0}
    assert "could not be read at the end edge" in window.unknown[1]
    assert "Unknown Error" in window.unknown[1]
    assert bad.energy_reads == 1 + READ_ATTEMPTS
    warning = fault_warnings("cycle 1/1", window, "EFFECT")
    assert f"{READ_ATTEMPTS} attempts failed, the last with: " in window.unknown[1]
    assert warning == [f"GPU 1, cycle 1/1: {window.unknown[1].rstrip('.')}; EFFECT."]
    bad = FakeDevice(cuda_index=1, uuid="GPU-fake-1", energy_script=[50.0, *[UNKNOWN] * READ_ATTEMPTS])
    with pytest.raises(DeviceError, match="GPU 1: its energy counter could not be read"):
        window_of(bad, allow_unknown=False)  # the default (e.g. track()) still refuses
    bad = FakeDevice(cuda_index=1, uuid="GPU-fake-1", energy_script=[UNKNOWN] * READ_ATTEMPTS)
    with pytest.raises(DeviceError, match="GPU 1: its energy counter could not be read"):
        read_start([bad], lambda: None)  # so does a mark, unless failures are allowed
    bad = FakeDevice(cuda_index=1, uuid="GPU-fake-1", energy_script=[UNKNOWN] * READ_ATTEMPTS)
    assert read_start([bad], lambda: None, allow_unknown=True).failed[1].startswith("3 attempts failed")


def test_lost_gpu_counter_is_not_retried() -> None:
    device = FakeDevice(energy_script=[100.0])
    _, window = measure_window([device], lambda: None, device.lose, clock([0.0, 1.0]), allow_unknown=True)
    assert window.energy_j == {} and "GPU is lost" in window.unknown[0]
    assert device.energy_reads == 2


# --- Counter that goes backwards or wraps ---


def test_counter_going_backwards_is_unknown_never_negative() -> None:
    window = window_of(FakeDevice(energy_script=[5_000_000.0, 4_000_000.0]))
    assert window.energy_j == {}
    assert window.unknown == {0: "its energy counter went backwards by 1000000.000 J"}


def test_counter_wrap_is_taken_across_when_consistent_with_2_64_mj() -> None:
    before_j = COUNTER_WRAP_J - 32.0  # a float near 2**64 mJ, exact to 4 J
    window = window_of(FakeDevice(energy_script=[before_j, 16.0]))
    assert window.energy_j == {0: pytest.approx(48.0)} and window.wrapped == (0,)
    assert "wrapped past 2^64 mJ" in fault_warnings("cycle 1/1", window, "")[0]
    implausible = window_of(FakeDevice(energy_script=[before_j, 1_000_000.0]))  # 1 MJ in 1 s
    assert implausible.energy_j == {} and "went backwards" in implausible.unknown[0]


# --- Breakdown: an unknown GPU has a null gross, so has the total; sparse traces skip the cross-check ---


def flat_trace(gpus: Iterable[int], start_s: float, end_s: float, step_s: float) -> PowerTrace:
    n = round((end_s - start_s) / step_s)
    samples = [
        TraceSample(timestamp_s=start_s + i * step_s, gpu=gpu, power_w=100.0)
        for gpu in gpus
        for i in range(n + 1)
    ]
    return PowerTrace(interval_s=0.1, samples=samples)


def two_gpus() -> list[FakeDevice]:
    return [FakeDevice(cuda_index=0), FakeDevice(cuda_index=1, uuid="GPU-fake-1")]


def test_breakdown_never_presents_a_partial_sum_as_gross() -> None:
    infos = [d.info for d in two_gpus()]
    idle = CounterWindow(start_s=0.0, end_s=2.0, energy_j={0: 100.0, 1: 80.0})
    window = CounterWindow(start_s=10.0, end_s=15.0, energy_j={0: 500.0}, unknown={1: "lost"})
    breakdown = build_breakdown(window, idle, flat_trace([0, 1], 10.0, 15.0, 0.1), infos)
    assert breakdown.gross_j is None and breakdown.partial_gross_j == 500.0
    assert breakdown.unknown_gpu_windows == 1 and breakdown.idle_power_w == pytest.approx(90.0)
    assert breakdown.net_j is None and breakdown.edge_uncertainty_j is None
    gpu0, gpu1 = breakdown.per_gpu
    assert gpu0.gross_j == 500.0 and gpu0.net_j == pytest.approx(250.0)  # GPU 0's own figures stay
    assert (gpu1.gross_j, gpu1.partial_gross_j, gpu1.unknown_windows) == (None, None, 1)
    assert gpu1.idle_power_w == pytest.approx(40.0) and gpu1.net_j is None


def test_summed_breakdown_marks_a_gpu_missing_from_one_window_as_partial() -> None:
    infos = [d.info for d in two_gpus()]
    first = CounterWindow(start_s=10.0, end_s=15.0, energy_j={0: 500.0, 1: 300.0})
    second = CounterWindow(start_s=20.0, end_s=25.0, energy_j={0: 400.0}, unknown={1: "backwards"})
    trace = flat_trace([0, 1], 10.0, 25.0, 0.1)
    idle = CounterWindow(start_s=0.0, end_s=2.0, energy_j={0: 100.0, 1: 80.0})
    total = sum_breakdowns([build_breakdown(w, idle, trace, infos) for w in (first, second)])
    gpu0, gpu1 = total.per_gpu
    assert (total.gross_j, total.partial_gross_j, total.unknown_gpu_windows) == (None, 1200.0, 1)
    assert gpu0.gross_j == 900.0 and gpu0.partial_gross_j is None and gpu0.unknown_windows == 0
    assert (gpu1.gross_j, gpu1.partial_gross_j, gpu1.unknown_windows) == (None, 300.0, 1)
    assert gpu0.net_j is not None and gpu0.trace_integral_j is not None
    assert gpu1.net_j is None and gpu1.trace_integral_j is None and gpu1.counter_vs_trace_pct is None
    assert total.net_j is None and total.edge_uncertainty_j is None


def test_a_partial_gross_cannot_be_written_as_a_total() -> None:
    with pytest.raises(ValueError, match="gross_j must be null"):
        GpuEnergy(cuda_index=0, uuid="GPU-0", gross_j=300.0, unknown_windows=1)
    with pytest.raises(ValueError, match="partial_gross_j is only set"):
        GpuEnergy(cuda_index=0, uuid="GPU-0", gross_j=300.0, partial_gross_j=300.0)


def test_sparse_trace_skips_the_cross_check_with_a_warning() -> None:
    info = FakeDevice().info
    window = CounterWindow(start_s=10.0, end_s=20.0, energy_j={0: 1000.0})
    dense = build_breakdown(window, None, flat_trace([0], 10.0, 20.0, 0.1), [info])
    assert dense.per_gpu[0].trace_integral_j == pytest.approx(1000.0)
    sparse_trace = flat_trace([0], 10.0, 20.0, 0.5)  # 21 samples where 100 were expected
    sparse = build_breakdown(window, None, sparse_trace, [info])
    assert sparse.per_gpu[0].trace_integral_j is None and sparse.per_gpu[0].counter_vs_trace_pct is None
    assert sparse.gross_j == 1000.0
    (warning,) = sparse_trace_warnings("cycle 1/1", window, sparse_trace, [0])
    assert warning.startswith("GPU 0, cycle 1/1: the power trace holds 21 samples where about 100")


# --- Whole runs through runner.execute: complete, warn, never a wrong energy unflagged ---


def cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    base: dict[str, object] = dict(
        n=4, batch_size=2, max_input_tokens=6, max_output_tokens=4, output_dir=str(tmp_path / "out"),
        mlflow=False, baseline_s=0.05, sampling_interval_s=0.005, warmup_batches=0,
    )  # fmt: skip
    return ExperimentConfig.model_validate({**base, **kw})


def execute_on(tmp_path: Path, devices: list[FakeDevice], backend: FakeBackend, **kw: object) -> Outcome:
    outcome: Outcome = execute(
        cfg(tmp_path, **kw),
        backend=backend,
        gpus=lambda ids: GpuSet(devices=devices, driver_version="580.159.04"),
        store_probe=lambda c: None,
    )
    saved = ExperimentResult.model_validate_json((outcome.result_dir / "result.json").read_text())
    assert saved == outcome.result  # the file is written and reads back
    return outcome


def run(tmp_path: Path, devices: list[FakeDevice], backend: FakeBackend, **kw: object) -> ExperimentResult:
    return execute_on(tmp_path, devices, backend, **kw).result


def assert_energy_unknown(record: CycleRecord, gpus: list[int]) -> None:
    """A cycle with an unknown counter delta: every energy figure null, the GPUs named."""
    assert record.unknown_gpus == gpus
    energy = (record.gross_j, record.net_j, record.edge_uncertainty_j)
    assert energy + (record.energy_per_output_token_j, record.net_energy_per_output_token_j) == (None,) * 5
    assert record.duration_s > 0 and record.output_tokens > 0  # time and tokens are still measured


def cuda_backend(gpus: int = 1, on_generate: Callable[[], None] | None = None) -> FakeBackend:
    def step() -> None:
        time.sleep(0.02)
        if on_generate is not None:
            on_generate()

    return FakeBackend(device="cuda", cuda_devices=CUDA[:gpus], on_generate=step)


def test_run_with_a_counter_read_failing_at_a_cycle_edge(tmp_path: Path) -> None:
    """Issue 16 item 1: the failed cycle made up a 0 J cycle and a J/token interval of [-365.8, 428.3]."""
    from mlflow import MlflowClient

    # Reads: idle start, idle end, cycle 1 start, end, cycle 2 start, end (every attempt fails).
    device = FakeDevice(energy_script=[10_000.0, 10_030.0, 10_100.0, 11_100.0, 11_200.0, *[UNKNOWN] * 3])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    outcome = execute_on(tmp_path, [device], cuda_backend(), cycles=2, mlflow=True, tracking_uri=uri)
    r = outcome.result
    assert r.energy is not None and r.energy_source == "nvml" and r.cycles is not None
    # Each cycle: the first complete, the second has no energy at all (not 0 J), so no J/token interval.
    assert [c.gross_j for c in r.cycles.records] == [1000.0, None]
    per_token = r.cycles.energy_per_output_token_j_ci95
    assert per_token is not None and (per_token.ci95_low, per_token.ci95_high) == (None, None)
    # What MLflow holds: no made-up figure, the flag as a tag, histories without the unknown cycle.
    client = MlflowClient(uri)
    assert outcome.run_id is not None
    logged = client.get_run(outcome.run_id).data
    made_up = {"energy/total_j", "energy/gross_j", "energy/gpu0_j", "energy/per_output_token_j"}
    made_up |= {f"energy/per_output_token_j_ci95_{side}" for side in ("low", "high")}
    assert not made_up & set(logged.metrics)
    history = client.get_metric_history(outcome.run_id, "cycles/gross_j")
    assert [(h.step, h.value) for h in history] == [(0, 1000.0)]
    assert len(client.get_metric_history(outcome.run_id, "cycles/duration_s")) == 2
    assert logged.tags["llem.quality.energy_incomplete"].startswith("The energy counter delta of 1 of 2")
    assert "energy_incomplete" in r.quality_flags
    # The records in detail, and the intervals: the energy ones rest on cycle 1 alone.
    first, second = r.cycles.records
    assert first.unknown_gpus == []
    assert first.energy_per_output_token_j == pytest.approx(1000.0 / first.output_tokens)
    assert_energy_unknown(second, [0])
    for interval in (r.cycles.gross_j_ci95, per_token):
        assert interval is not None and interval.n == 1 and interval.left_out == [1]
        assert (interval.ci95_low, interval.ci95_high) == (None, None)
    assert r.cycles.gross_j_ci95 is not None and r.cycles.gross_j_ci95.values == [1000.0]
    assert r.cycles.output_tokens_per_s_ci95.ci95_low is None  # two cycles: no bounds at all
    assert "Energy intervals across cycles rest on 1 of 2 cycles: cycle 2/2 left out" in "\n".join(r.warnings)
    # The total and the breakdown: null, the known part apart and named as partial.
    assert r.total_energy_j is None and r.avg_energy_per_token_j is None
    assert (r.energy.gross_j, r.energy.partial_gross_j, r.energy.unknown_gpu_windows) == (None, 1000.0, 1)
    (gpu,) = r.energy.per_gpu
    assert (gpu.gross_j, gpu.partial_gross_j, gpu.unknown_windows) == (None, 1000.0, 1)
    assert r.energy.net_j is None and r.energy.edge_uncertainty_j is None
    assert any(
        w.startswith("Total energy not reported (null): the counter delta of GPU 0") for w in r.warnings
    )
    (warning,) = [w for w in r.warnings if w.startswith("GPU 0, cycle 2/2:")]
    assert "could not be read at the end edge" in warning and "too low" not in warning
    from llem_mlflow.cli.summary import summary

    (energy_line,) = [line for line in summary(outcome).splitlines() if line.startswith("energy ")]
    assert "unknown: the counter delta of 1 (GPU, window) pair(s)" in energy_line
    assert "the known part is 1,000 J" in energy_line and "not measured" not in energy_line


def test_energy_intervals_rest_on_the_cycles_whose_energy_is_known(tmp_path: Path) -> None:
    # Idle, then 4 cycles of 1000, 1020, (end read fails), 990 J: the interval rests on 3 of them.
    script = [0.0, 30.0, 100.0, 1100.0, 1200.0, 2220.0, 2300.0, *[UNKNOWN] * 3, 3400.0, 4390.0]
    r = run(tmp_path, [FakeDevice(energy_script=script)], cuda_backend(), cycles=4)
    assert r.cycles is not None
    assert [c.gross_j for c in r.cycles.records] == [1000.0, 1020.0, None, 990.0]
    assert_energy_unknown(r.cycles.records[2], [0])
    gross = r.cycles.gross_j_ci95
    assert gross is not None and gross.values == [1000.0, 1020.0, 990.0] and gross.left_out == [2]
    assert gross.ci95_low is not None and gross.ci95_high is not None
    assert 900.0 < gross.ci95_low < 990.0 and 1020.0 < gross.ci95_high < 1100.0
    assert r.cycles.duration_s_ci95.n == 4  # time is known in every cycle
    assert r.total_energy_j is None and "energy_incomplete" in r.quality_flags
    assert "rest on 3 of 4 cycles: cycle 3/4 left out" in "\n".join(r.warnings)


def test_run_with_every_power_read_failing_and_idle_settle(tmp_path: Path) -> None:
    def not_supported() -> float:
        raise NOT_SUPPORTED

    device = FakeDevice(energy_script=[10_000.0, 10_030.0, 10_100.0, 11_100.0], power_w=not_supported)
    r = run(tmp_path, [device], cuda_backend(), idle_settle_max_s=1.0, n=8)  # >= 10 samples expected
    assert r.total_energy_j == 1000.0  # energy is the counter's: power faults do not touch it
    assert r.energy is not None and r.energy.per_gpu[0].trace_integral_j is None
    assert r.idle_settle is None
    assert any(w.startswith("Idle settle skipped: a power reading failed") for w in r.warnings)
    (sampler,) = [w for w in r.warnings if w.startswith("Power sampler: ")]
    assert " power readings of GPU 0 failed (first error: " in sampler
    assert any(w.startswith("GPU 0, cycle 1/1: the power trace holds 0 samples") for w in r.warnings)


def test_run_with_a_gpu_lost_mid_cycle(tmp_path: Path) -> None:
    gpu0 = FakeDevice(cuda_index=0, energy_script=[10_000.0, 10_030.0, 10_100.0, 11_100.0])
    gpu1 = FakeDevice(cuda_index=1, uuid="GPU-fake-1", energy_script=[20_000.0, 20_020.0, 20_100.0])
    r = run(tmp_path, [gpu0, gpu1], cuda_backend(2, on_generate=gpu1.lose))
    assert r.energy is not None and [g.cuda_index for g in r.energy.per_gpu] == [0, 1]
    assert [g.gross_j for g in r.energy.per_gpu] == [1000.0, None]  # GPU 0 complete, GPU 1 unknown
    assert r.energy.per_gpu[1].partial_gross_j is None and r.energy.per_gpu[1].unknown_windows == 1
    assert r.total_energy_j is None and r.energy.gross_j is None and r.energy.partial_gross_j == 1000.0
    assert r.energy.net_j is None and r.cycles is not None
    assert_energy_unknown(r.cycles.records[0], [1])
    assert "energy_incomplete" in r.quality_flags
    assert any(w.startswith("GPU 1, cycle 1/1: its energy counter could not be read") for w in r.warnings)
    assert any("GPU 1 was lost" in w for w in r.warnings)
    assert gpu1.energy_reads == 4  # the lost GPU's end read was not retried


def test_run_with_its_only_gpu_lost_is_flagged_not_silent(tmp_path: Path) -> None:
    device = FakeDevice(energy_script=[10_000.0, 10_030.0, 10_100.0])
    r = run(tmp_path, [device], cuda_backend(on_generate=device.lose))
    assert r.total_energy_j is None and r.energy is not None and r.avg_energy_per_token_j is None
    assert (r.energy.gross_j, r.energy.partial_gross_j) == (None, None)  # nothing known: no 0 J
    (gpu,) = r.energy.per_gpu
    assert (gpu.gross_j, gpu.partial_gross_j, gpu.unknown_windows) == (None, None, 1)
    assert r.cycles is not None and r.cycles.energy_per_output_token_j_ci95 is None
    assert_energy_unknown(r.cycles.records[0], [0])
    assert any(w.startswith("GPU 0, cycle 1/1:") and "is unknown" in w for w in r.warnings)
    assert "energy_incomplete" in r.quality_flags  # flagged, not a 0 J/token left to another rule
    assert "energy_per_token_out_of_bounds" not in r.quality_flags


def test_run_with_a_counter_going_backwards(tmp_path: Path) -> None:
    gpu0 = FakeDevice(cuda_index=0, energy_script=[10_000.0, 10_030.0, 10_100.0, 11_100.0])
    gpu1 = FakeDevice(cuda_index=1, uuid="GPU-fake-1", energy_script=[20_000.0, 20_020.0, 20_100.0, 7.0])
    r = run(tmp_path, [gpu0, gpu1], cuda_backend(2))
    assert r.total_energy_j is None and r.energy is not None and r.energy.net_j is None
    assert [g.gross_j for g in r.energy.per_gpu] == [1000.0, None]  # never negative, never made up
    assert r.cycles is not None and r.cycles.gross_j_ci95 is None
    assert_energy_unknown(r.cycles.records[0], [1])
    backwards = "GPU 1, cycle 1/1: its energy counter went backwards by 20093.000 J"
    assert any(w.startswith(backwards) for w in r.warnings)


def test_run_with_a_counter_read_failing_in_the_idle_baseline(tmp_path: Path) -> None:
    device = FakeDevice(energy_script=[10_000.0, *[UNKNOWN] * 3, 10_100.0, 11_100.0])
    r = run(tmp_path, [device], cuda_backend())
    assert r.total_energy_j == 1000.0 and r.energy is not None  # the measured window is complete
    assert r.energy.idle_power_w is None and r.energy.net_j is None
    assert r.cycles is not None and r.cycles.records[0].gross_j == 1000.0
    assert r.cycles.records[0].net_j is None and r.cycles.records[0].unknown_gpus == []
    assert "energy_incomplete" not in r.quality_flags  # gross is complete: only net is unknown
    idle = "GPU 0, idle baseline: its energy counter could not be read"
    assert any(w.startswith(idle) for w in r.warnings)


def test_steady_state_run_with_the_first_counter_mark_failing(tmp_path: Path) -> None:
    # Reads: idle start, idle end, then the cycle's marks: start (every attempt fails), 3 batch edges, end.
    script = [10_000.0, 10_030.0, *[UNKNOWN] * 3, 10_200.0, 10_400.0, 10_600.0, 10_800.0]
    device = FakeDevice(energy_script=script)
    r = run(tmp_path, [device], cuda_backend(), n=8, measurement_methodology="steady_state")
    assert r.energy is not None and r.energy.net_j is None
    assert r.steady_state is not None and device.energy_reads == len(script)
    assert r.steady_state.trimmed_batches == [0]  # flat power: no ramp, the window starts at the failed mark
    assert r.total_energy_j is None and r.avg_energy_per_token_j is None
    assert r.steady_state.full_window_gross_j == [None]  # the ramp window lost its start edge too
    assert r.cycles is not None
    assert_energy_unknown(r.cycles.records[0], [0])
    assert any(w.startswith("GPU 0, cycle 1/1") and "start edge" in w for w in r.warnings)


def test_run_on_a_mig_gpu_refuses_energy_clearly(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(uuid="GPU-fake-0", bus_id="00000000:19:00.0", mig_mode=1)])
    outcome = execute(cfg(tmp_path), backend=cuda_backend(), gpus=lambda ids: _nvml_gpus(ids, nvml=nvml))
    r = outcome.result
    assert (r.energy_source, r.total_energy_j, r.energy) == ("none", None, None)
    (warning,) = [w for w in r.warnings if "MIG" in w]
    assert warning.startswith("energy not measured: CUDA device 0 is a MIG-enabled GPU")
    assert "Disable MIG" in warning and nvml.shutdowns == 1
