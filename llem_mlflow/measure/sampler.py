"""PowerSampler: a daemon thread that records a power trace (and slower readings) of the run's GPUs.

The trace is for shape, phases and a cross-check; energy comes from the counter (``energy.py``), so
the sampler never reads the energy counter (a ~4 ms call that would also perturb the workload).

Scheduling: ticks sit on an absolute timeline ``t0 + k * interval_s`` (monotonic clock), waited for
with ``threading.Event.wait`` so ``stop()`` interrupts at once; a late tick does not shift the ones
after it, and ticks missed while overrunning are skipped rather than bunched. Timestamps come from
``clock`` (Unix epoch seconds) so they line up with the counter windows.

NVML faults (docs/reliability/nvml-faults.md): a power reading that fails is left out of the trace
and counted; ``warnings`` gives, per GPU, how many of its power readings failed and the first error.
A GPU that NVML reports as lost (``DeviceLostError``) is not read again: the trace has no samples of
it from then on. A failing slow reading keeps the power sample with those fields empty.

Samples go straight into the ``PowerTrace`` columns (no ``TraceSample`` objects), under a lock so a
sample taken by ``stop()`` never interleaves with one from the thread; once ``stop()`` has built the
trace, nothing is added to it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

from llem_mlflow.errors import ConfigError
from llem_mlflow.measure.device import DeviceLostError
from llem_mlflow.measure.trace import PowerTrace, SlowValues
from llem_mlflow.protocols import GpuDevice, SlowReading


class PowerSampler:
    """Samples every device's ``power_w()`` each ``interval_s``, ``slow_reading()`` each ``slow_every`` ticks.

    One sample is taken in ``start()`` and one in ``stop()``, so the trace brackets any window measured
    between them. Construction starts nothing. A failing read never stops the loop; ``warnings`` says
    what failed (see the module docstring).
    """

    def __init__(
        self,
        devices: Sequence[GpuDevice],
        interval_s: float,
        slow_every: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval_s > 0:
            raise ConfigError(f"Power sampling interval must be > 0 s, got {interval_s}; use e.g. 0.02.")
        if slow_every < 1:
            raise ConfigError(f"slow_every must be >= 1, got {slow_every}.")
        self._devices = list(devices)
        self.interval_s = interval_s
        self.slow_every = slow_every
        self._clock = clock
        self._collected = PowerTrace(interval_s=interval_s)
        self._add_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._trace: PowerTrace | None = None
        self._first_error: dict[tuple[int, str], str] = {}  # (GPU, "power" | "slow") -> first error
        self._power_reads: dict[int, int] = {}  # power readings tried, per GPU
        self._power_failures: dict[int, int] = {}
        self._lost: dict[int, str] = {}  # GPUs NVML reported lost, with the error; not read again

    def start(self) -> None:
        """Take the first sample (with slow readings) and start the sampling thread."""
        if self._thread is not None:
            raise RuntimeError("PowerSampler.start() called twice; create a new sampler per run.")
        self._sample(slow=True)
        self._thread = threading.Thread(target=self._run, name="llem-power-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> PowerTrace:
        """Stop the thread, take the last sample (with slow readings) and return the trace."""
        if self._trace is not None:
            return self._trace
        self._stop_event.set()
        try:
            if self._thread is not None:
                self._thread.join()
        finally:
            self._sample(slow=True)
            with self._add_lock:
                self._trace = self._collected
        return self._trace

    @property
    def warnings(self) -> list[str]:
        """Per GPU: failed power readings (how many, first error), a lost GPU, a failed slow reading."""
        out = []
        for gpu, failures in list(self._power_failures.items()):
            out.append(
                f"Power sampler: {failures} of {self._power_reads[gpu]} power readings of GPU {gpu} failed "
                f"(first error: {self._first_error[(gpu, 'power')]}); those samples are missing from the "
                "trace."
            )
        for gpu, error in list(self._lost.items()):
            out.append(
                f"Power sampler: GPU {gpu} was lost ({error}); it was not sampled again, so the trace has no "
                "samples of it from then on."
            )
        for (gpu, kind), error in list(self._first_error.items()):
            if kind == "slow":
                out.append(
                    f"Power sampler: a slow reading of GPU {gpu} failed ({error}); those fields are left "
                    "empty."
                )
        return out

    @property
    def trace(self) -> PowerTrace | None:
        """The trace once ``stop()`` has run, else None."""
        return self._trace

    def __enter__(self) -> PowerSampler:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        t0 = time.monotonic()
        tick = 1
        while not self._stop_event.wait(max(0.0, t0 + tick * self.interval_s - time.monotonic())):
            self._sample(slow=tick % self.slow_every == 0)
            behind = time.monotonic() - (t0 + tick * self.interval_s)
            tick += 1 + max(0, math.floor(behind / self.interval_s))

    def _sample(self, slow: bool) -> None:
        for device in self._devices:
            gpu = device.info.cuda_index
            if gpu in self._lost:
                continue
            self._power_reads[gpu] = self._power_reads.get(gpu, 0) + 1
            try:
                timestamp_s = self._clock()
                power_w = device.power_w()
            except DeviceLostError as e:
                self._lost[gpu] = str(e)
                continue
            except Exception as e:  # any failure of one read must not end the trace
                self._first_error.setdefault((gpu, "power"), str(e))  # before the count: see warnings
                self._power_failures[gpu] = self._power_failures.get(gpu, 0) + 1
                continue
            reading = self._slow(device, gpu) if slow else None
            self._add(timestamp_s, gpu, power_w, reading)

    def _add(self, timestamp_s: float, gpu: int, power_w: float, reading: SlowReading | None) -> None:
        """Add one sample unless the trace was handed out; slow values the trace refuses are left out."""
        with self._add_lock:
            if self._trace is not None:
                return
            try:
                self._collected.add(timestamp_s, gpu, power_w, _slow_values(reading))
                return
            except ValueError as e:  # e.g. an int reading outside int64: keep the power sample
                self._first_error.setdefault((gpu, "slow"), str(e))
            try:
                self._collected.add(timestamp_s, gpu, power_w)
            except ValueError as e:  # a NaN timestamp: counted as a failed power reading
                self._first_error.setdefault((gpu, "power"), str(e))
                self._power_failures[gpu] = self._power_failures.get(gpu, 0) + 1

    def _slow(self, device: GpuDevice, gpu: int) -> SlowReading | None:
        try:
            return device.slow_reading()
        except Exception as e:  # slow readings are optional; keep the power sample
            self._first_error.setdefault((gpu, "slow"), str(e))
            return None


def _slow_values(reading: SlowReading | None) -> SlowValues | None:
    if reading is None:
        return None
    return (
        reading.temperature_c,
        reading.sm_clock_mhz,
        reading.utilization_pct,
        reading.memory_used_b,
        reading.throttle_reasons,
        reading.compute_processes,
    )
