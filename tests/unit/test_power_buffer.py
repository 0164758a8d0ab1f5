"""Power from the driver's sample buffer: exact samples, none twice, polling where there is no buffer,
overflows warned about, the last samples taken at stop(), and the NVML fault rules kept.

No timing assertions: tests that need the sampler thread to read wait (with a generous hang guard) until
the fake buffer was read often enough; the others read it only in start() and stop().
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from pydantic import ValidationError

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import DeviceError
from llem_mlflow.measure.device import (
    DeviceLostError,
    NvmlDevice,
    NvmlSession,
    PowerBufferUnsupportedError,
)
from llem_mlflow.measure.power_buffer import open_buffer
from llem_mlflow.measure.sampler import PowerSampler
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.results.identity import resolve
from tests.fakes import FakeDevice, FakeGpu, FakeNvml, FakeNVMLError, FakePowerBuffer

SPACING_US = 20_000  # the H200's buffer spacing, ~20 ms
NEVER_S = 3600.0  # a buffer period the thread never reaches in a test: only start() and stop() read


def wait_until(predicate: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Block until ``predicate()`` holds; fail (a hang guard, not a timing assertion) after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail("the sampler made no progress")
        time.sleep(0.001)


def filled(n: int, first_w: float = 150.0, capacity: int = 120) -> FakePowerBuffer:
    """A buffer of ``n`` samples ``SPACING_US`` apart ending about now (Unix epoch), ``first_w`` + k W."""
    buffer = FakePowerBuffer(capacity=capacity)
    now_us = int(time.time() * 1e6)
    buffer.push_script([first_w + k for k in range(n)], SPACING_US, first_us=now_us - (n - 1) * SPACING_US)
    return buffer


def nvml_devices(*buffers: FakePowerBuffer | None) -> list[NvmlDevice]:
    """NvmlDevices over FakeNvml, GPU i serving ``buffers[i]`` (None: Not Supported)."""
    gpus = [
        FakeGpu(uuid=f"GPU-{i}", bus_id=f"00000000:{0x19 + i:02X}:00.0", power_buffer=b)
        for i, b in enumerate(buffers)
    ]
    session = NvmlSession(FakeNvml(gpus))
    return session.devices_for([CudaDeviceId(i, g.uuid, None) for i, g in enumerate(gpus)])


# --- NvmlDevice.power_samples ------------------------------------------------------------------------


def test_nvml_device_reads_the_buffer_in_watts_and_nothing_newer_is_empty() -> None:
    buffer = FakePowerBuffer([(1_000_000, 150_250), (1_020_000, 151_001)])
    (device,) = nvml_devices(buffer)
    assert device.power_samples(0) == [(1_000_000, 150.25), (1_020_000, 151.001)]
    assert device.power_samples(1_000_000) == [(1_020_000, 151.001)]
    assert device.power_samples(1_020_000) == []  # NVML answers NVML_ERROR_NOT_FOUND


def test_nvml_device_errors_of_the_buffer() -> None:
    (none,) = nvml_devices(None)
    with pytest.raises(PowerBufferUnsupportedError, match="Not Supported"):
        none.power_samples(0)
    buffer = FakePowerBuffer([(1_000_000, 150_000)])
    (device,) = nvml_devices(buffer)
    buffer.fail_next(
        FakeNVMLError("Function Not Found", value=13),  # a driver without the call
        FakeNVMLError("GPU is lost", value=15),
        FakeNVMLError("Unknown Error", value=999),
    )
    with pytest.raises(PowerBufferUnsupportedError):
        device.power_samples(0)
    with pytest.raises(DeviceLostError):
        device.power_samples(0)
    with pytest.raises(DeviceError) as excinfo:
        device.power_samples(0)
    assert not isinstance(excinfo.value, (PowerBufferUnsupportedError, DeviceLostError))
    assert device.power_samples(0) == [(1_000_000, 150.0)]


# --- PowerSampler in buffer mode -----------------------------------------------------------------------


def test_buffer_mode_fills_the_trace_with_the_buffers_samples() -> None:
    buffer = filled(5)  # 150..154 W; start() keeps only the newest, the rest predates the trace
    (device,) = nvml_devices(buffer)
    sampler = PowerSampler([device], interval_s=0.015)
    sampler.start()
    buffer.push_script([200.0, 201.5, 202.25])
    trace = sampler.stop()
    newest = buffer.newest_us()
    expected_us = [newest - 3 * SPACING_US, *(newest - k * SPACING_US for k in (2, 1, 0))]
    assert list(trace.times_s(0)) == [t / 1e6 for t in expected_us]  # exact: same clock, no offset
    assert list(trace.powers_w(0)) == [154.0, 200.0, 201.5, 202.25]  # mW -> W, not the polled 80.7 W
    assert sampler.sources == {0: "buffer"} and sampler.warnings == []
    temperatures = [s.temperature_c for s in trace.for_gpu(0)]
    assert temperatures == [41.0, None, None, 41.0]  # slow readings go with each read's newest sample
    assert trace.interval_s == pytest.approx(SPACING_US / 1e6)  # the spacing the trace really has


def test_stop_takes_the_samples_since_the_last_read() -> None:
    buffer = filled(3)
    device = FakeDevice(power_buffer=buffer)
    sampler = PowerSampler([device], interval_s=0.015, buffer_period_s=NEVER_S)
    sampler.start()
    buffer.push_script([300.0, 301.0])
    trace = sampler.stop()
    assert buffer.reads == 2  # start() and stop(): the thread never read
    assert list(trace.powers_w(0)) == [152.0, 300.0, 301.0]
    assert trace.times_s(0)[-1] == buffer.newest_us() / 1e6
    assert device.power_reads == 0  # a buffered GPU is never polled


def test_no_sample_is_kept_twice_across_reads() -> None:
    buffer = FakePowerBuffer.live(250.0, spacing_us=1000, capacity=10**6)  # one sample a ms, never full
    device = FakeDevice(power_buffer=buffer)
    sampler = PowerSampler([device], interval_s=0.015, buffer_period_s=0.002)
    sampler.start()
    wait_until(lambda: buffer.reads >= 20)
    trace = sampler.stop()
    times_us = [round(t * 1e6) for t in trace.times_s(0)]
    assert len(times_us) > 1 and times_us == sorted(set(times_us))  # no duplicate, in order
    assert all(b - a == 1000 for a, b in zip(times_us, times_us[1:], strict=False))  # and no gap
    assert sampler.warnings == []


def test_gpus_without_a_buffer_are_polled() -> None:
    polled, buffered = (
        FakeDevice(cuda_index=0, power_w=90.0),
        FakeDevice(cuda_index=1, power_buffer=filled(4)),
    )
    sampler = PowerSampler([polled, buffered], interval_s=0.015)
    sampler.start()
    trace = sampler.stop()
    assert sampler.sources == {0: "poll", 1: "buffer"}
    assert polled.power_reads >= 2 and buffered.power_reads == 0
    assert set(trace.powers_w(0)) == {90.0} and list(trace.powers_w(1)) == [153.0]
    assert sampler.warnings == []  # auto: polling where there is no buffer is no fault
    assert "polled every 0.015 s" in sampler.source_notes[0] and "sample buffer" in sampler.source_notes[1]
    assert trace.interval_s == pytest.approx(0.02)  # the sparser of the two


def test_buffer_mode_warns_per_polled_gpu_and_poll_mode_never_reads_the_buffer() -> None:
    sampler = PowerSampler([FakeDevice(cuda_index=3)], interval_s=0.015, mode="buffer")
    sampler.start()
    sampler.stop()
    (warning,) = sampler.warnings
    assert "GPU 3 was polled every 0.015 s instead of read from NVML's power sample buffer" in warning
    buffered = FakeDevice(power_buffer=filled(4))
    poll = PowerSampler([buffered], interval_s=0.015, mode="poll")
    poll.start()
    poll.stop()
    assert buffered.buffer_reads == 0 and buffered.power_reads >= 2 and poll.sources == {0: "poll"}


def test_an_empty_buffer_or_one_on_no_known_clock_is_not_used() -> None:
    far_future_us = int((time.time() + 10**6) * 1e6)
    empty, odd = FakePowerBuffer(), FakePowerBuffer([(far_future_us, 100_000)])
    (a, b) = nvml_devices(empty, odd)
    assert open_buffer(a, time.time) == "its power sample buffer held no samples"
    reason = open_buffer(b, time.time)
    assert isinstance(reason, str) and "match none of the clocks" in reason
    sampler = PowerSampler([a, b], interval_s=0.015)
    sampler.start()
    sampler.stop()
    assert sampler.sources == {0: "poll", 1: "poll"}


def test_buffer_timestamps_on_another_clock_are_put_on_the_traces_clock() -> None:
    now_us = int(time.monotonic() * 1e6)  # a driver whose "CPU timestamp" is not Unix epoch time
    buffer = FakePowerBuffer([(now_us - k * SPACING_US, 100_000 + k) for k in (2, 1, 0)])
    sampler = PowerSampler([FakeDevice(power_buffer=buffer)], interval_s=0.015, buffer_period_s=NEVER_S)
    sampler.start()
    buffer.push([(now_us + SPACING_US, 120_000)])
    trace = sampler.stop()
    offset_s = time.time() - time.monotonic()
    expected = [now_us / 1e6 + offset_s, (now_us + SPACING_US) / 1e6 + offset_s]
    assert list(trace.times_s(0)) == pytest.approx(expected, abs=0.05)  # epoch seconds, not uptime
    assert "CLOCK_" in sampler.source_notes[0]  # boot time or monotonic (equal on a host never suspended)


def test_an_overwritten_buffer_is_counted_and_warned_about() -> None:
    buffer = filled(10, capacity=10)
    sampler = PowerSampler([FakeDevice(power_buffer=buffer)], interval_s=0.015, buffer_period_s=NEVER_S)
    sampler.start()
    last_kept_us = buffer.newest_us()
    buffer.push_script([400.0 + k for k in range(25)])  # the ring keeps only the last 10
    trace = sampler.stop()
    assert list(trace.powers_w(0)) == [159.0, *(400.0 + k for k in range(15, 25))]
    assert trace.times_s(0)[1] == (last_kept_us + 16 * SPACING_US) / 1e6
    (warning,) = sampler.warnings
    assert "buffer of GPU 0 was overwritten before it was read, 1 time(s)" in warning
    assert "about 0.30 s of power samples lost" in warning  # 15 samples of 20 ms never read


# --- NVML faults (docs/reliability/nvml-faults.md) --------------------------------------------------------


def test_a_failing_buffer_read_is_counted_and_the_next_read_takes_its_samples() -> None:
    buffer = filled(3)
    sampler = PowerSampler([FakeDevice(power_buffer=buffer)], interval_s=0.015, buffer_period_s=0.002)
    sampler.start()
    buffer.fail_next(DeviceError("Unknown Error"))
    buffer.push_script([500.0, 501.0])
    wait_until(lambda: buffer.reads >= 4)
    trace = sampler.stop()
    assert list(trace.powers_w(0)) == [152.0, 500.0, 501.0]  # nothing lost: the buffer kept them
    (warning,) = sampler.warnings
    assert re.search(r"1 of \d+ reads of the power sample buffer of GPU 0 failed .*Unknown Error", warning)


def test_a_lost_gpu_is_not_read_again() -> None:
    healthy = FakePowerBuffer.live(200.0, spacing_us=1000, capacity=10**6)
    gone = FakeDevice(cuda_index=0, power_buffer=filled(3))
    devices = [gone, FakeDevice(cuda_index=1, power_buffer=healthy)]
    sampler = PowerSampler(devices, interval_s=0.015, buffer_period_s=0.002)
    sampler.start()
    gone.lose()
    wait_until(lambda: any("GPU 0 was lost" in w for w in sampler.warnings))
    reads_when_lost, healthy_reads = gone.buffer_reads, healthy.reads
    wait_until(lambda: healthy.reads >= healthy_reads + 5)  # the thread went on reading the other GPU
    trace = sampler.stop()
    assert gone.buffer_reads == reads_when_lost  # neither the thread nor stop() read it again
    assert gone.power_reads == 0  # nor fell back to polling it
    assert trace.count(0) == 1 and trace.count(1) > 1
    (warning,) = sampler.warnings
    assert "GPU 0 was lost (Reading the power sample buffer of GPU 0 failed: GPU is lost.)" in warning


# --- the config choice ------------------------------------------------------------------------------------


def test_power_sampling_is_a_config_choice_outside_the_measurement_hash() -> None:
    cpu = {"weights": "random", "precision": "fp32", "device": "cpu", "revision": None}
    same = {"dataset": "synthetic", "tokenizer": None, **cpu}
    poll = resolve(ExperimentConfig(power_sampling="poll"), **same).measurement_hash()
    assert poll == resolve(ExperimentConfig(), **same).measurement_hash()
    assert ExperimentConfig().power_sampling == "auto"
    with pytest.raises(ValidationError):
        ExperimentConfig(power_sampling="sometimes")
