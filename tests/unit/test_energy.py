"""Counter windows, idle baseline and the energy breakdown, on FakeDevices with scripted counters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from llem_mlflow.errors import DeviceError
from llem_mlflow.measure.energy import (
    CounterWindow,
    build_breakdown,
    energy_warnings,
    measure_idle,
    measure_window,
)
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from tests.fakes import FakeDevice


def scripted_clock(times: Iterable[float]) -> Callable[[], float]:
    values = iter(times)
    return lambda: next(values)


def flat_trace(
    gpu_power_w: dict[int, float], start_s: float, end_s: float, step_s: float = 0.5
) -> PowerTrace:
    n = round((end_s - start_s) / step_s)
    samples = [
        TraceSample(timestamp_s=start_s + i * step_s, gpu=gpu, power_w=power_w)
        for gpu, power_w in gpu_power_w.items()
        for i in range(n + 1)
    ]
    return PowerTrace(interval_s=step_s, samples=samples)


def test_measure_window_order_of_edges() -> None:
    log: list[str] = []

    def counter() -> float:
        log.append("counter")
        return 100.0 * len(log)

    def clock() -> float:
        log.append("clock")
        return float(len(log))

    def body() -> int:
        log.append("body")
        return 42

    device = FakeDevice(energy_script=counter)
    out, window = measure_window([device], lambda: log.append("sync"), body, clock)
    assert out == 42
    assert log == ["sync", "counter", "clock", "body", "sync", "clock", "counter"]
    assert window.start_s == 3.0 and window.end_s == 6.0
    assert window.energy_j == {0: 700.0 - 200.0}


def test_measure_window_per_gpu_deltas() -> None:
    gpu0 = FakeDevice(cuda_index=0, energy_script=[1000.0, 1500.0])
    gpu1 = FakeDevice(cuda_index=1, uuid="GPU-fake-1", energy_script=[50.0, 350.0])
    _, window = measure_window([gpu0, gpu1], lambda: None, lambda: None, scripted_clock([10.0, 15.0]))
    assert window.energy_j == {0: 500.0, 1: 300.0}
    assert window.duration_s == 5.0
    assert gpu0.energy_reads == 2 and gpu1.energy_reads == 2


def test_negative_delta_raises_and_zero_passes() -> None:
    reset = FakeDevice(energy_script=[1000.0, 10.0])
    with pytest.raises(DeviceError, match="went backwards"):
        measure_window([reset], lambda: None, lambda: None, scripted_clock([0.0, 1.0]))
    still = FakeDevice(energy_script=[5.0, 5.0])
    _, window = measure_window([still], lambda: None, lambda: None, scripted_clock([0.0, 1.0]))
    assert window.energy_j == {0: 0.0}


def test_measure_idle_sleeps_the_duration_between_edges() -> None:
    slept: list[float] = []
    syncs: list[int] = []
    device = FakeDevice(energy_script=[900.0, 1000.0])
    idle = measure_idle(
        [device], lambda: syncs.append(1), 2.0, sleep=slept.append, clock=scripted_clock([0, 2])
    )
    assert slept == [2.0]
    assert len(syncs) == 2
    assert idle.energy_j == {0: 100.0}
    assert idle.duration_s == 2.0


def two_gpu_case() -> tuple[CounterWindow, CounterWindow, list[FakeDevice]]:
    devices = [FakeDevice(cuda_index=0), FakeDevice(cuda_index=1, uuid="GPU-fake-1")]
    window = CounterWindow(start_s=10.0, end_s=15.0, energy_j={0: 500.0, 1: 300.0})
    idle = CounterWindow(start_s=0.0, end_s=2.0, energy_j={0: 100.0, 1: 80.0})
    return window, idle, devices


def test_breakdown_exact_numbers() -> None:
    window, idle, devices = two_gpu_case()
    trace = flat_trace({0: 80.0, 1: 60.0}, 10.0, 15.0)
    breakdown = build_breakdown(window, idle, trace, [d.info for d in devices])
    gpu0, gpu1 = breakdown.per_gpu
    assert gpu0.gross_j == 500.0 and gpu1.gross_j == 300.0
    assert gpu0.idle_power_w == pytest.approx(50.0) and gpu1.idle_power_w == pytest.approx(40.0)
    assert gpu0.net_j == pytest.approx(500.0 - 50.0 * 5) and gpu1.net_j == pytest.approx(300.0 - 40.0 * 5)
    assert gpu0.trace_integral_j == pytest.approx(400.0) and gpu1.trace_integral_j == pytest.approx(300.0)
    assert gpu0.counter_vs_trace_pct == pytest.approx(20.0) and gpu1.counter_vs_trace_pct == pytest.approx(
        0.0
    )
    assert gpu0.samples_in_window == 11 and gpu1.uuid == "GPU-fake-1"
    assert breakdown.gross_j == 800.0
    assert breakdown.idle_power_w == pytest.approx(90.0)
    assert breakdown.idle_duration_s == 2.0
    assert breakdown.net_j == pytest.approx(350.0)
    assert breakdown.edge_uncertainty_j == pytest.approx((80 + 80) * 0.1 + (60 + 60) * 0.1)


def test_breakdown_edge_uses_nearest_samples() -> None:
    window = CounterWindow(start_s=10.0, end_s=12.0, energy_j={0: 400.0})
    trace = PowerTrace(
        interval_s=0.1,
        samples=[
            TraceSample(timestamp_s=9.98, gpu=0, power_w=100.0),
            TraceSample(timestamp_s=11.0, gpu=0, power_w=300.0),
            TraceSample(timestamp_s=12.01, gpu=0, power_w=200.0),
        ],
    )
    breakdown = build_breakdown(window, None, trace, [FakeDevice().info], counter_update_s=0.1)
    assert breakdown.edge_uncertainty_j == pytest.approx((100.0 + 200.0) * 0.1)
    assert breakdown.idle_power_w is None and breakdown.net_j is None and breakdown.idle_duration_s is None


def test_breakdown_without_trace_samples() -> None:
    window, idle, devices = two_gpu_case()
    breakdown = build_breakdown(window, idle, PowerTrace(interval_s=0.1), [d.info for d in devices])
    assert breakdown.edge_uncertainty_j is None
    assert all(g.trace_integral_j is None and g.counter_vs_trace_pct is None for g in breakdown.per_gpu)
    assert breakdown.gross_j == 800.0


def test_breakdown_missing_gpu_reading_raises() -> None:
    window = CounterWindow(start_s=0.0, end_s=5.0, energy_j={0: 1.0})
    with pytest.raises(DeviceError):
        build_breakdown(window, None, PowerTrace(interval_s=0.1), [FakeDevice(cuda_index=3).info])


def test_no_warnings_for_a_clean_run() -> None:
    window, idle, devices = two_gpu_case()
    trace = flat_trace({0: 100.0, 1: 60.0}, 10.0, 15.0)
    breakdown = build_breakdown(window, idle, trace, [d.info for d in devices])
    assert energy_warnings(breakdown, window) == []


def test_warnings_short_window_zero_energy_trace_gap_negative_net() -> None:
    window = CounterWindow(start_s=0.0, end_s=0.5, energy_j={0: 0.0, 1: 40.0})
    idle = CounterWindow(start_s=0.0, end_s=2.0, energy_j={0: 200.0, 1: 200.0})
    trace = flat_trace({0: 100.0, 1: 100.0}, 0.0, 0.5, step_s=0.1)
    devices = [FakeDevice(cuda_index=0), FakeDevice(cuda_index=1, uuid="GPU-fake-1")]
    breakdown = build_breakdown(window, idle, trace, [d.info for d in devices])
    warnings = energy_warnings(breakdown, window)
    text = "\n".join(warnings)
    assert len(warnings) == 4
    assert "quantisation" in text
    assert "GPU 0 did not move" in text
    assert "GPU 1: the energy counter and the power-trace integral differ by -25.0%" in text
    assert "Net energy is negative" in text
