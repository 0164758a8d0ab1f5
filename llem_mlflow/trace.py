"""PowerTrace: the sampled time series (absolute timestamps, per GPU) and pure helpers on it.

The trace gives shape, phases and a cross-check; energy itself comes from the counter.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TraceSample:
    """One sample of one GPU. ``timestamp_s`` is Unix epoch seconds (wall clock)."""

    timestamp_s: float
    gpu: int  # CUDA index as the process sees it
    power_w: float
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    utilization_pct: float | None = None
    memory_used_b: int | None = None
    throttle_reasons: int | None = None
    compute_processes: int | None = None  # NVML's count on this GPU, this process included


@dataclass
class PowerTrace:
    """All samples of a run, in time order per GPU."""

    interval_s: float
    samples: list[TraceSample] = field(default_factory=list)

    def gpus(self) -> list[int]:
        """CUDA indices present in the trace, sorted."""
        return sorted({s.gpu for s in self.samples})

    def for_gpu(self, gpu: int) -> list[TraceSample]:
        """Samples of one GPU in time order."""
        return sorted((s for s in self.samples if s.gpu == gpu), key=lambda s: s.timestamp_s)

    def between(self, gpu: int, start_s: float, end_s: float) -> list[TraceSample]:
        """Samples of one GPU with ``start_s <= t <= end_s``."""
        return [s for s in self.for_gpu(gpu) if start_s <= s.timestamp_s <= end_s]

    def integrate_j(self, gpu: int, start_s: float, end_s: float) -> float | None:
        """Trapezoid integral of power over [start_s, end_s], None with fewer than 2 samples.

        Power before the first / after the last in-window sample is held constant to the edges.
        """
        pts = [(s.timestamp_s, s.power_w) for s in self.between(gpu, start_s, end_s)]
        if len(pts) < 2:
            return None
        pts = [(start_s, pts[0][1]), *pts, (end_s, pts[-1][1])]
        return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:], strict=False))


def thin_power(samples: list[TraceSample], max_points: int) -> list[tuple[float, float]]:
    """(timestamp_s, power_w) of one GPU's samples, at most ``max_points`` of them.

    Up to ``max_points`` samples: each as it is. More: consecutive buckets of ceil(n / max_points)
    samples, each as (its first sample's timestamp, the mean power of the bucket), so the chart keeps
    the shape while a 1-hour trace stays cheap to log. The full trace is always in the Parquet file.
    """
    if max_points < 1:
        raise ValueError("max_points must be >= 1")
    if len(samples) <= max_points:
        return [(s.timestamp_s, s.power_w) for s in samples]
    size = -(-len(samples) // max_points)
    buckets = [samples[i : i + size] for i in range(0, len(samples), size)]
    return [(b[0].timestamp_s, sum(s.power_w for s in b) / len(b)) for b in buckets]
