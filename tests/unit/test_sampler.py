"""PowerSampler on FakeDevices: bracketing samples, slow cadence, failure tolerance, no counter reads.

No timing assertions: tests wait (with a generous liveness bound) until enough reads happened.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llem_mlflow.errors import ConfigError, DeviceError
from llem_mlflow.measure.sampler import PowerSampler
from llem_mlflow.protocols import SlowReading
from llem_mlflow.results import files as artifacts
from tests.fakes import DEFAULT_SLOW, FakeDevice


def wait_until(predicate: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Block until ``predicate()`` holds; fail (not a timing assertion, a hang guard) after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("sampler made no progress")
        time.sleep(0.001)


def test_construction_starts_nothing() -> None:
    device = FakeDevice()
    threads_before = threading.active_count()
    sampler = PowerSampler([device], interval_s=0.001)
    assert device.power_reads == 0
    assert threading.active_count() == threads_before
    assert sampler.trace is None


def test_trace_brackets_window_and_never_reads_counter() -> None:
    device = FakeDevice(power_w=250.0)
    sampler = PowerSampler([device], interval_s=0.002)
    sampler.start()
    window_start_s = time.time()
    wait_until(lambda: device.power_reads >= 5)
    window_end_s = time.time()
    trace = sampler.stop()
    times = [s.timestamp_s for s in trace.samples]
    assert len(trace.samples) >= 5
    assert times[0] <= window_start_s
    assert times[-1] >= window_end_s
    assert times == sorted(times)
    assert all(s.power_w == 250.0 and s.gpu == 0 for s in trace.samples)
    assert device.energy_reads == 0
    assert trace.interval_s == 0.002


def test_slow_fields_only_on_every_nth_sample() -> None:
    device = FakeDevice()
    sampler = PowerSampler([device], interval_s=0.001, slow_every=1000)
    sampler.start()
    wait_until(lambda: device.power_reads >= 10)
    trace = sampler.stop()
    with_slow = [s for s in trace.samples if s.temperature_c is not None]
    assert trace.samples[0].temperature_c == 45.0  # start sample
    assert trace.samples[-1].temperature_c == 45.0  # stop sample
    assert 2 <= len(with_slow) < len(trace.samples)
    assert len(with_slow) == device.slow_reads
    assert all(s.sm_clock_mhz == 1980.0 and s.throttle_reasons == 0 for s in with_slow)
    assert all(s.sm_clock_mhz is None for s in trace.samples if s.temperature_c is None)


def test_slow_every_one_reads_slow_fields_on_every_sample() -> None:
    device = FakeDevice()
    sampler = PowerSampler([device], interval_s=0.001, slow_every=1)
    sampler.start()
    wait_until(lambda: device.power_reads >= 5)
    trace = sampler.stop()
    assert all(s.utilization_pct == 50.0 for s in trace.samples)
    assert device.slow_reads == len(trace.samples)


def test_compute_processes_are_copied_into_slow_samples_only() -> None:
    device = FakeDevice(slow=dataclasses.replace(DEFAULT_SLOW, compute_processes=2))
    sampler = PowerSampler([device], interval_s=0.001, slow_every=3)
    sampler.start()
    wait_until(lambda: device.power_reads >= 10)
    trace = sampler.stop()
    with_slow = [s for s in trace.samples if s.temperature_c is not None]
    assert 2 <= len(with_slow) == device.slow_reads < len(trace.samples)
    assert all(s.compute_processes == 2 for s in with_slow)
    assert all(s.compute_processes is None for s in trace.samples if s.temperature_c is None)


def test_failing_device_warns_once_and_others_keep_sampling() -> None:
    def broken() -> float:
        raise DeviceError("power read failed")

    good = FakeDevice(cuda_index=0)
    bad = FakeDevice(cuda_index=1, uuid="GPU-fake-1", power_w=broken)
    sampler = PowerSampler([good, bad], interval_s=0.001)
    sampler.start()
    wait_until(lambda: bad.power_reads >= 5)
    trace = sampler.stop()
    assert trace.gpus() == [0]
    assert len(trace.for_gpu(0)) >= 5
    assert len(sampler.warnings) == 1
    assert "GPU 1" in sampler.warnings[0] and "power read failed" in sampler.warnings[0]


def test_failing_slow_reading_keeps_power_sample() -> None:
    def broken() -> SlowReading:
        raise DeviceError("temperature read failed")

    device = FakeDevice(slow=broken)
    sampler = PowerSampler([device], interval_s=0.001, slow_every=1)
    sampler.start()
    wait_until(lambda: device.power_reads >= 3)
    trace = sampler.stop()
    assert len(trace.samples) >= 3
    assert all(s.temperature_c is None for s in trace.samples)
    assert len(sampler.warnings) == 1


def test_context_manager_and_injected_clock() -> None:
    ticks = iter(range(1_000_000))
    device = FakeDevice()
    with PowerSampler([device], interval_s=0.001, clock=lambda: float(next(ticks))) as sampler:
        wait_until(lambda: device.power_reads >= 3)
    trace = sampler.trace
    assert trace is not None
    assert [s.timestamp_s for s in trace.samples] == [float(i) for i in range(len(trace.samples))]
    assert sampler.stop() is trace  # idempotent


@pytest.mark.parametrize(("interval_s", "slow_every"), [(0.0, 5), (-1.0, 5), (0.01, 0)])
def test_invalid_settings_are_rejected(interval_s: float, slow_every: int) -> None:
    with pytest.raises(ConfigError):
        PowerSampler([FakeDevice()], interval_s=interval_s, slow_every=slow_every)


def test_thin_power_keeps_short_traces_and_buckets_long_ones() -> None:
    from llem_mlflow.measure.trace import TraceSample, thin_power

    samples = [TraceSample(timestamp_s=i * 0.1, gpu=0, power_w=float(i)) for i in range(10)]
    assert thin_power(samples, 10) == [(s.timestamp_s, s.power_w) for s in samples]
    thinned = thin_power(samples, 4)  # buckets of ceil(10 / 4) = 3: [0,1,2] [3,4,5] [6,7,8] [9]
    assert [p for _, p in thinned] == [1.0, 4.0, 7.0, 9.0]
    assert [t for t, _ in thinned] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    with pytest.raises(ValueError):
        thin_power(samples, 0)


def test_a_slow_value_the_trace_cannot_store_keeps_the_power_sample(tmp_path: Path) -> None:
    """A reading outside int64 (the Parquet column's type) is left out with a warning; no sample is lost."""
    device = FakeDevice(slow=dataclasses.replace(DEFAULT_SLOW, memory_used_b=1 << 64))
    sampler = PowerSampler([device], interval_s=0.001, slow_every=1)
    sampler.start()
    wait_until(lambda: device.power_reads >= 5)
    trace = sampler.stop()
    assert len(trace.samples) == device.power_reads
    assert all(s.memory_used_b is None and s.power_w == 100.0 for s in trace.samples)
    assert any("memory_used_b" in w and "left empty" in w for w in sampler.warnings)
    path = artifacts.write_trace_parquet(trace, tmp_path, {})  # the trace file is still written
    assert artifacts.read_trace_parquet(path) == trace


def test_the_trace_stop_hands_out_gets_no_late_sample() -> None:
    device = FakeDevice()
    sampler = PowerSampler([device], interval_s=0.001)
    sampler.start()
    wait_until(lambda: device.power_reads >= 3)
    trace = sampler.stop()
    held = len(trace.samples)
    sampler._sample(slow=True)  # a tick the thread was still taking when stop() returned
    assert device.power_reads == held + 1 and len(trace.samples) == held
