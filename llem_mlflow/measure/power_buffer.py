"""PowerBuffer: one GPU's power samples read from the driver's sample buffer instead of polled.

The driver keeps a ring of recent power samples per GPU (``GpuDevice.power_samples``, NVML's
``nvmlDeviceGetSamples``; on an H200 about 120 samples about 20 ms apart, so about 2.4 s deep). Reading
it once every ``BUFFER_READ_PERIOD_S`` gives the same trace as polling every 20 ms, for one ~0.3 ms call
a second instead of ~65 wake-ups, so a launch-bound workload loses next to nothing to the sampler.

Each read asks for the samples newer than the newest already kept, so no sample is kept twice. A read
whose oldest new sample lies more than ``MAX_GAP_SPACINGS`` sample spacings after the last one kept
found the ring overwritten since the read before (the thread was late by more than the buffer's depth):
it is counted (``overflows``, ``lost_s``) and the sampler warns.

Clocks: NVML documents the timestamps only as "CPU timestamp in microseconds". They are not always Unix
epoch time (on Linux some drivers use CLOCK_BOOTTIME), so ``open_buffer`` matches the newest sample
against the trace's clock and a few others (``reference_clocks``) and keeps the one it lies close to;
each read converts with the offset between that clock and the trace's clock, taken at that read (so a
slewing wall clock is followed). A buffer whose samples match no clock is not used.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from llem_mlflow.protocols import GpuDevice

#: Seconds between two reads of a buffer. The H200's buffer holds ~2.4 s (~120 samples ~20 ms apart):
#: reading every 1 s leaves a late wake-up (GIL held by a long Python step, a GC pause) 1.4 s of
#: slack before samples are overwritten, and costs one ~0.3 ms call per GPU per second.
BUFFER_READ_PERIOD_S = 1.0
#: A hole of more than this many sample spacings between the last kept sample and a read's oldest
#: new one means the ring was overwritten in between (one or two missed samples are sensor jitter).
MAX_GAP_SPACINGS = 3.0
#: How far the newest buffered sample may lie from "now" on the clock it is matched to (the buffer's
#: newest sample is normally a few tens of ms old; clocks that are not the buffer's differ by days).
MAX_CLOCK_MISMATCH_S = 5.0

Clock = Callable[[], float]


def _boot_time() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def reference_clocks(trace_clock: Clock) -> list[tuple[str, Clock]]:
    """The clocks a buffer's timestamps are matched against, the trace's own first."""
    clocks: list[tuple[str, Clock]] = [("the trace's clock (Unix epoch time)", trace_clock)]
    if hasattr(time, "CLOCK_BOOTTIME"):  # Linux
        clocks.append(("boot time (CLOCK_BOOTTIME)", _boot_time))
    clocks.append(("monotonic time (CLOCK_MONOTONIC)", time.monotonic))
    return clocks


@dataclass
class PowerBuffer:
    """One GPU's buffer reader: what was kept so far and how its timestamps map to the trace's clock."""

    device: GpuDevice
    trace_clock: Clock
    clock_name: str
    source_clock: Clock
    last_seen_us: int
    spacing_s: float | None  # median spacing of the buffer's samples; None when it held only one
    depth_s: float  # newest - oldest sample of the first read
    overflows: int = 0
    lost_s: float = 0.0

    def offset_s(self) -> float:
        """Seconds to add to a buffer timestamp (on its clock) to put it on the trace's clock."""
        if self.source_clock is self.trace_clock:
            return 0.0
        return self.trace_clock() - self.source_clock()

    def read(self) -> list[tuple[float, float]]:
        """The samples newer than the last kept, as ``(trace timestamp_s, watts)``; errors propagate."""
        samples = self.device.power_samples(self.last_seen_us)
        samples = [s for s in samples if s[0] > self.last_seen_us]
        if not samples:
            return []
        self._count_gap(samples[0][0])
        self.last_seen_us = samples[-1][0]
        offset_s = self.offset_s()
        return [(t_us / 1e6 + offset_s, watts) for t_us, watts in samples]

    def _count_gap(self, first_new_us: int) -> None:
        if self.spacing_s is None:
            return
        gap_s = (first_new_us - self.last_seen_us) / 1e6
        if gap_s > MAX_GAP_SPACINGS * self.spacing_s:
            self.overflows += 1
            self.lost_s += gap_s - self.spacing_s


def open_buffer(device: GpuDevice, trace_clock: Clock) -> tuple[PowerBuffer, tuple[float, float]] | str:
    """The buffer of ``device`` and its newest sample on the trace's clock, or why it cannot be used.

    Reads the whole buffer once: its newest sample matches a clock (``reference_clocks``), gives the
    starting point of later reads and brackets the trace's start; its spacing and depth are kept.
    Never raises: a failing read (any error) is a reason to poll instead.
    """
    try:
        samples = sorted(device.power_samples(0))
    except Exception as e:  # unsupported, or a first read that fails: polling is the safe fallback
        return f"its power sample buffer cannot be read ({e})"
    if not samples:
        return "its power sample buffer held no samples"
    newest_us = samples[-1][0]
    match = _matching_clock(newest_us / 1e6, trace_clock)
    if match is None:
        return (
            f"the power sample buffer's timestamps ({newest_us} us) match none of the clocks "
            f"{', '.join(name for name, _ in reference_clocks(trace_clock))}"
        )
    name, source = match
    times_s = [t_us / 1e6 for t_us, _ in samples]
    gaps_s = [b - a for a, b in zip(times_s, times_s[1:], strict=False)]
    spacing_s = statistics.median(gaps_s) if gaps_s else 0.0
    buffer = PowerBuffer(
        device=device,
        trace_clock=trace_clock,
        clock_name=name,
        source_clock=source,
        last_seen_us=newest_us,
        spacing_s=spacing_s if spacing_s > 0 else None,  # None: one sample, or repeated timestamps
        depth_s=times_s[-1] - times_s[0],
    )
    return buffer, (times_s[-1] + buffer.offset_s(), samples[-1][1])


def _matching_clock(newest_s: float, trace_clock: Clock) -> tuple[str, Clock] | None:
    """The reference clock whose "now" lies nearest ``newest_s``, if within ``MAX_CLOCK_MISMATCH_S``."""
    distances = [(abs(clock() - newest_s), name, clock) for name, clock in reference_clocks(trace_clock)]
    distance, name, clock = min(distances, key=lambda d: d[0])
    return (name, clock) if distance <= MAX_CLOCK_MISMATCH_S else None
