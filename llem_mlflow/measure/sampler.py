"""PowerSampler: a daemon thread that records a power trace (and slower readings) of the run's GPUs.

The trace is for shape, phases and a cross-check; energy comes from the counter (``energy.py``), so
the sampler never reads the energy counter (a ~4 ms call that would also perturb the workload).

Two ways to get power, chosen per GPU in ``start()`` (``mode``, the config's ``power_sampling``):

* **buffer**: the driver's power sample buffer (``power_buffer.py``), read every
  ``BUFFER_READ_PERIOD_S``; the trace gets the driver's own samples (~20 ms apart on an H200) for one
  call a second, and the slow readings are taken at each read, attached to its newest sample.
* **poll**: ``power_w()`` every ``interval_s``, slow readings every ``slow_every`` ticks.

``auto`` (the default) reads the buffer where the GPU has a usable one and polls the others; ``buffer``
does the same but warns for each GPU it has to poll; ``poll`` always polls. ``sources`` and
``source_notes`` say what each GPU got. With buffered GPUs the trace's ``interval_s`` is the sample
spacing it really has (the largest of the buffers' spacings and, if any GPU is polled, ``interval_s``).

Scheduling: ticks sit on an absolute timeline ``t0 + k * interval_s`` (monotonic clock), waited for
with ``threading.Event.wait`` so ``stop()`` interrupts at once; a late tick does not shift the ones
after it, and ticks missed while overrunning are skipped rather than bunched. Timestamps come from
``clock`` (Unix epoch seconds) so they line up with the counter windows.

NVML faults (docs/reliability/nvml-faults.md): a power reading that fails is left out of the trace
and counted; ``warnings`` gives, per GPU, how many of its power readings failed and the first error.
A buffer read that fails is counted the same way; the next read takes its samples (the buffer keeps
them), unless the buffer overflowed meanwhile, which is counted and warned about on its own.
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
from typing import Literal, get_args

from llem_mlflow.errors import ConfigError
from llem_mlflow.measure.device import DeviceLostError
from llem_mlflow.measure.power_buffer import BUFFER_READ_PERIOD_S, PowerBuffer, open_buffer
from llem_mlflow.measure.trace import PowerTrace, SlowValues
from llem_mlflow.protocols import GpuDevice, SlowReading

PowerSampling = Literal["auto", "buffer", "poll"]


class PowerSampler:
    """Samples every device's power (buffer or poll, see the module docstring) and its slow readings.

    One sample is taken in ``start()`` and one in ``stop()`` (a buffered GPU: its newest buffered
    sample, then a last read of the buffer), so the trace brackets any window measured between them.
    Construction starts nothing. A failing read never stops the loop; ``warnings`` says what failed.
    """

    def __init__(
        self,
        devices: Sequence[GpuDevice],
        interval_s: float,
        slow_every: int = 5,
        clock: Callable[[], float] = time.time,
        mode: PowerSampling = "auto",
        buffer_period_s: float = BUFFER_READ_PERIOD_S,
    ) -> None:
        if not interval_s > 0:
            raise ConfigError(f"Power sampling interval must be > 0 s, got {interval_s}; use e.g. 0.02.")
        if slow_every < 1:
            raise ConfigError(f"slow_every must be >= 1, got {slow_every}.")
        if mode not in get_args(PowerSampling) or not buffer_period_s > 0:
            raise ConfigError(
                f"Power sampling must be auto, buffer or poll, read every > 0 s; got mode={mode!r}, "
                f"buffer_period_s={buffer_period_s}."
            )
        self._devices = list(devices)
        self.interval_s = interval_s
        self.slow_every = slow_every
        self.mode = mode
        self.buffer_period_s = buffer_period_s
        self._clock = clock
        self._collected = PowerTrace(interval_s=interval_s)
        self._add_lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._trace: PowerTrace | None = None
        self._first_error: dict[tuple[int, str], str] = {}  # (GPU, "power" | "slow") -> first error
        self._power_reads: dict[int, int] = {}  # power readings (or buffer reads) tried, per GPU
        self._power_failures: dict[int, int] = {}
        self._lost: dict[int, str] = {}  # GPUs NVML reported lost, with the error; not read again
        self._buffers: dict[int, PowerBuffer] = {}  # GPUs whose power comes from the driver's buffer
        self._why_polled: dict[int, str] = {}  # polled GPUs, and why their buffer is not used
        self.sources: dict[int, str] = {}  # per GPU: "buffer" or "poll", decided in start()

    def start(self) -> None:
        """Choose buffer or poll per GPU, take the first sample (with slow readings), start the thread."""
        if self._thread is not None:
            raise RuntimeError("PowerSampler.start() called twice; create a new sampler per run.")
        self._choose_sources()
        self._sample(slow=True)
        self._thread = threading.Thread(target=self._run, name="llem-power-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> PowerTrace:
        """Stop the thread, take the last samples (with slow readings) and return the trace."""
        if self._trace is not None:
            return self._trace
        self._stop_event.set()
        try:
            if self._thread is not None:
                self._thread.join()
        finally:
            self._sample(slow=True)
            self._drain()
            with self._add_lock:
                self._trace = self._collected
        return self._trace

    @property
    def warnings(self) -> list[str]:
        """Per GPU: failed power readings (how many, first error), a lost GPU, a failed slow reading;
        per buffered GPU, overflows; with ``mode="buffer"``, each GPU that had to be polled."""
        out = [self._failure_warning(gpu, failures) for gpu, failures in list(self._power_failures.items())]
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
        return out + self._buffer_warnings()

    @property
    def source_notes(self) -> list[str]:
        """One line per GPU: how its power was observed (for the result's or the trace's metadata)."""
        notes = []
        for gpu in self.sources:
            buffer = self._buffers.get(gpu)
            if buffer is not None:
                spacing = "?" if buffer.spacing_s is None else f"{buffer.spacing_s:.3f}"
                notes.append(
                    f"GPU {gpu}: power from NVML's sample buffer (samples ~{spacing} s apart, read every "
                    f"{self.buffer_period_s:g} s; its timestamps are on {buffer.clock_name})."
                )
            else:
                why = f" ({self._why_polled[gpu]})" if gpu in self._why_polled else ""
                notes.append(f"GPU {gpu}: power polled every {self.interval_s:g} s{why}.")
        return notes

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

    def _choose_sources(self) -> None:
        """Open each GPU's buffer (unless ``mode`` is poll) and keep its newest sample; poll the rest."""
        for device in self._devices:
            gpu = device.info.cuda_index
            opened = "power_sampling is poll" if self.mode == "poll" else open_buffer(device, self._clock)
            if isinstance(opened, str):
                self.sources[gpu] = "poll"
                self._why_polled[gpu] = opened
                continue
            self._buffers[gpu], (timestamp_s, power_w) = opened
            self.sources[gpu] = "buffer"
            self._add(timestamp_s, gpu, power_w, self._slow(device, gpu))
        spacings = [b.spacing_s for b in self._buffers.values() if b.spacing_s is not None]
        if spacings:  # the trace's period is what its samples really have, for the sparse-trace check
            polled = len(self._buffers) < len(self._devices)
            self._collected.interval_s = max([*spacings, *([self.interval_s] if polled else [])])

    def _run(self) -> None:
        polled = len(self._buffers) < len(self._devices)
        period_s = self.interval_s if polled else self.buffer_period_s
        every = max(1, round(self.buffer_period_s / period_s))  # ticks between two buffer reads
        t0 = time.monotonic()
        tick, next_drain = 1, every
        while not self._stop_event.wait(max(0.0, t0 + tick * period_s - time.monotonic())):
            self._sample(slow=tick % self.slow_every == 0)
            if tick >= next_drain:
                self._drain()
                next_drain = tick + every
            behind = time.monotonic() - (t0 + tick * period_s)
            tick += 1 + max(0, math.floor(behind / period_s))

    def _sample(self, slow: bool) -> None:
        """One power reading of every polled GPU (with slow readings when ``slow``)."""
        for device in self._devices:
            gpu = device.info.cuda_index
            if gpu in self._lost or gpu in self._buffers:
                continue
            self._power_reads[gpu] = self._power_reads.get(gpu, 0) + 1
            try:
                timestamp_s = self._clock()
                power_w = device.power_w()
            except DeviceLostError as e:
                self._lost[gpu] = str(e)
                continue
            except Exception as e:  # any failure of one read must not end the trace
                self._read_failed(gpu, e)
                continue
            reading = self._slow(device, gpu) if slow else None
            self._add(timestamp_s, gpu, power_w, reading)

    def _drain(self) -> None:
        """Read every buffered GPU's new samples; the slow readings go with each read's newest one."""
        for gpu, buffer in list(self._buffers.items()):
            if gpu in self._lost:
                continue
            self._power_reads[gpu] = self._power_reads.get(gpu, 0) + 1
            try:
                samples = buffer.read()
            except DeviceLostError as e:
                self._lost[gpu] = str(e)
                continue
            except Exception as e:  # the buffer keeps the samples: the next read takes them
                self._read_failed(gpu, e)
                continue
            if not samples:
                continue
            *earlier, (last_s, last_w) = samples
            for timestamp_s, power_w in earlier:
                self._add(timestamp_s, gpu, power_w, None)
            self._add(last_s, gpu, last_w, self._slow(buffer.device, gpu))

    def _read_failed(self, gpu: int, error: Exception) -> None:
        self._first_error.setdefault((gpu, "power"), str(error))  # before the count: see warnings
        self._power_failures[gpu] = self._power_failures.get(gpu, 0) + 1

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
                self._read_failed(gpu, e)

    def _slow(self, device: GpuDevice, gpu: int) -> SlowReading | None:
        try:
            return device.slow_reading()
        except Exception as e:  # slow readings are optional; keep the power sample
            self._first_error.setdefault((gpu, "slow"), str(e))
            return None

    def _failure_warning(self, gpu: int, failures: int) -> str:
        error = self._first_error[(gpu, "power")]
        if gpu in self._buffers:
            return (
                f"Power sampler: {failures} of {self._power_reads[gpu]} reads of the power sample buffer of "
                f"GPU {gpu} failed (first error: {error}); the next successful read took their samples "
                "unless the buffer overflowed meanwhile."
            )
        return (
            f"Power sampler: {failures} of {self._power_reads[gpu]} power readings of GPU {gpu} failed "
            f"(first error: {error}); those samples are missing from the trace."
        )

    def _buffer_warnings(self) -> list[str]:
        out = []
        for gpu, buffer in list(self._buffers.items()):
            if buffer.overflows:
                out.append(
                    f"Power sampler: NVML's power sample buffer of GPU {gpu} was overwritten before it was "
                    f"read, {buffer.overflows} time(s) (about {buffer.lost_s:.2f} s of power samples lost; "
                    f"it holds about {buffer.depth_s:.1f} s and is read every {self.buffer_period_s:g} s); "
                    "the trace has gaps there."
                )
        if self.mode == "buffer":
            for gpu, why in self._why_polled.items():
                out.append(
                    f"Power sampler: GPU {gpu} was polled every {self.interval_s:g} s instead of read from "
                    f"NVML's power sample buffer: {why}."
                )
        return out


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
