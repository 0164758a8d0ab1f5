"""Counter-based energy: CUDA-synced measurement windows, the idle baseline and the energy breakdown.

Energy is the delta of NVML's cumulative energy counter read at the two edges of a window (as Zeus
does); the power trace only cross-checks it and bounds the edge quantisation. The counter updates
every ~100 ms, so each edge can be one update stale: ``edge_uncertainty_j`` states that bound.

Edge order (``measure_window``)::

    sync(); read counters; start_s = clock(); body(); sync(); end_s = clock(); read counters

Syncing first makes queued GPU work from before the window land before the first read, and work of
the body land before the last read. The timestamps sit on the inner side of the counter reads, so
``[start_s, end_s]`` is exactly the time the body (plus its final sync) ran, and the counter span
covers it with one read's cost (~3-4 ms per GPU) of idle-ish margin on each side, smaller than the
100 ms update step. Counters are read in the same device order at both edges, so each GPU's span is
offset equally.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from llem_mlflow.errors import DeviceError
from llem_mlflow.protocols import GpuDevice, GpuInfo
from llem_mlflow.result import EnergyBreakdown, GpuEnergy
from llem_mlflow.trace import PowerTrace, TraceSample

T = TypeVar("T")

_MIN_COUNTER_UPDATES = 10
_MAX_TRACE_GAP_PCT = 10.0


@dataclass(frozen=True)
class CounterWindow:
    """Counter deltas over one window; ``energy_j`` is keyed by CUDA index; times are Unix epoch seconds."""

    start_s: float
    end_s: float
    energy_j: dict[int, float]

    @property
    def duration_s(self) -> float:
        """Length of the window in seconds."""
        return self.end_s - self.start_s


def _read_counters(devices: Sequence[GpuDevice]) -> dict[int, float]:
    return {device.info.cuda_index: device.energy_j() for device in devices}


def _deltas(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    deltas = {gpu: after[gpu] - before[gpu] for gpu in before}
    for gpu, delta_j in deltas.items():
        if delta_j < 0:
            raise DeviceError(
                f"The energy counter of GPU {gpu} went backwards by {-delta_j:.3f} J during the window "
                "(counter reset, driver reload or GPU reset). Re-run the experiment; if it repeats, "
                "check `nvidia-smi -q -d POWER` and the kernel log."
            )
    return deltas


def measure_window(
    devices: Sequence[GpuDevice],
    sync: Callable[[], None],
    body: Callable[[], T],
    clock: Callable[[], float] = time.time,
) -> tuple[T, CounterWindow]:
    """Run ``body`` between two CUDA-synced counter reads; return its result and the counter window.

    Raises ``DeviceError`` when a counter went backwards; a zero delta passes (see ``energy_warnings``).
    """
    sync()
    before = _read_counters(devices)
    start_s = clock()
    out = body()
    sync()
    end_s = clock()
    after = _read_counters(devices)
    return out, CounterWindow(start_s=start_s, end_s=end_s, energy_j=_deltas(before, after))


@dataclass(frozen=True)
class CounterMark:
    """Counters read at a CUDA-synced point inside a window: ``at_s`` is taken before the read."""

    at_s: float
    energy_j: dict[int, float]


def read_start(
    devices: Sequence[GpuDevice], sync: Callable[[], None], clock: Callable[[], float] = time.time
) -> CounterMark:
    """Sync, read every counter, take the time (the start-edge order of ``measure_window``)."""
    sync()
    energy_j = _read_counters(devices)
    return CounterMark(at_s=clock(), energy_j=energy_j)


def read_mark(
    devices: Sequence[GpuDevice], sync: Callable[[], None], clock: Callable[[], float] = time.time
) -> CounterMark:
    """Sync, take the time, read every counter (the end-edge order of ``measure_window``)."""
    sync()
    at_s = clock()
    return CounterMark(at_s=at_s, energy_j=_read_counters(devices))


def window_between(start: CounterMark, end: CounterMark) -> CounterWindow:
    """The counter window from one mark to a later one (``DeviceError`` if a counter went backwards)."""
    return CounterWindow(start_s=start.at_s, end_s=end.at_s, energy_j=_deltas(start.energy_j, end.energy_j))


def measure_idle(
    devices: Sequence[GpuDevice],
    sync: Callable[[], None],
    duration_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> CounterWindow:
    """Counter window over ``duration_s`` of sleeping (model loaded, CUDA context alive), same edges."""
    _, window = measure_window(devices, sync, lambda: sleep(duration_s), clock)
    return window


def _nearest_power_w(samples: list[TraceSample], at_s: float) -> float | None:
    if not samples:
        return None
    return min(samples, key=lambda s: abs(s.timestamp_s - at_s)).power_w


def _gpu_energy(
    gpu: GpuInfo, window: CounterWindow, idle: CounterWindow | None, trace: PowerTrace
) -> GpuEnergy:
    index = gpu.cuda_index
    if index not in window.energy_j:
        raise DeviceError(f"No counter reading for GPU {index} in the measured window; this is a bug.")
    gross_j = window.energy_j[index]
    idle_w = None
    if idle is not None and index in idle.energy_j and idle.duration_s > 0:
        idle_w = idle.energy_j[index] / idle.duration_s
    trace_j = trace.integrate_j(index, window.start_s, window.end_s)
    return GpuEnergy(
        cuda_index=index,
        uuid=gpu.uuid,
        gross_j=gross_j,
        idle_power_w=idle_w,
        net_j=None if idle_w is None else gross_j - idle_w * window.duration_s,
        trace_integral_j=trace_j,
        counter_vs_trace_pct=None if trace_j is None or gross_j <= 0 else (gross_j - trace_j) / gross_j * 100,
        samples_in_window=len(trace.between(index, window.start_s, window.end_s)),
    )


def _edge_uncertainty_j(
    window: CounterWindow, trace: PowerTrace, gpus: Sequence[GpuInfo], counter_update_s: float
) -> float | None:
    """Sum over GPUs of (power at start edge + power at end edge) x one counter update; None without trace."""
    total_j = 0.0
    for gpu in gpus:
        samples = trace.for_gpu(gpu.cuda_index)
        start_w = _nearest_power_w(samples, window.start_s)
        end_w = _nearest_power_w(samples, window.end_s)
        if start_w is None or end_w is None:
            return None
        total_j += (start_w + end_w) * counter_update_s
    return total_j


def _sum_or_none(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def build_breakdown(
    window: CounterWindow,
    idle: CounterWindow | None,
    trace: PowerTrace,
    gpus: Sequence[GpuInfo],
    counter_update_s: float = 0.1,
) -> EnergyBreakdown:
    """Gross, idle, net energy per GPU and summed, with the trace cross-check and edge uncertainty."""
    per_gpu = [_gpu_energy(gpu, window, idle, trace) for gpu in gpus]
    return EnergyBreakdown(
        gross_j=sum(g.gross_j for g in per_gpu),
        idle_power_w=_sum_or_none([g.idle_power_w for g in per_gpu]),
        idle_duration_s=None if idle is None else idle.duration_s,
        net_j=_sum_or_none([g.net_j for g in per_gpu]),
        edge_uncertainty_j=_edge_uncertainty_j(window, trace, gpus, counter_update_s),
        counter_update_s=counter_update_s,
        per_gpu=per_gpu,
    )


def sum_breakdowns(parts: Sequence[EnergyBreakdown]) -> EnergyBreakdown:
    """The breakdown of several measured windows together (cycles): energies and edge bounds add up.

    Gross, net, trace integrals and edge uncertainties are sums (each window has its own two edges);
    idle power is the one baseline all windows share; counter vs trace is recomputed from the sums.
    """
    if len(parts) == 1:
        return parts[0]
    per_gpu = [_sum_gpu([p.per_gpu[i] for p in parts]) for i in range(len(parts[0].per_gpu))]
    first = parts[0]
    return EnergyBreakdown(
        gross_j=sum(p.gross_j for p in parts),
        idle_power_w=first.idle_power_w,
        idle_duration_s=first.idle_duration_s,
        net_j=_sum_or_none([p.net_j for p in parts]),
        edge_uncertainty_j=_sum_or_none([p.edge_uncertainty_j for p in parts]),
        counter_update_s=first.counter_update_s,
        per_gpu=per_gpu,
    )


def _sum_gpu(parts: Sequence[GpuEnergy]) -> GpuEnergy:
    gross_j = sum(g.gross_j for g in parts)
    trace_j = _sum_or_none([g.trace_integral_j for g in parts])
    return GpuEnergy(
        cuda_index=parts[0].cuda_index,
        uuid=parts[0].uuid,
        gross_j=gross_j,
        idle_power_w=parts[0].idle_power_w,
        net_j=_sum_or_none([g.net_j for g in parts]),
        trace_integral_j=trace_j,
        counter_vs_trace_pct=None if trace_j is None or gross_j <= 0 else (gross_j - trace_j) / gross_j * 100,
        samples_in_window=sum(g.samples_in_window for g in parts),
    )


def energy_warnings(breakdown: EnergyBreakdown, window: CounterWindow) -> list[str]:
    """Plain-language warnings about how far the energy numbers can be trusted."""
    warnings = []
    min_s = _MIN_COUNTER_UPDATES * breakdown.counter_update_s
    if window.duration_s < min_s:
        warnings.append(
            f"The measured window lasted {window.duration_s:.3f} s, under ~{_MIN_COUNTER_UPDATES} energy "
            f"counter updates ({min_s:.1f} s): the energy is dominated by counter quantisation. "
            "Use more prompts or longer outputs."
        )
    for gpu in breakdown.per_gpu:
        if gpu.gross_j == 0:
            warnings.append(
                f"The energy counter of GPU {gpu.cuda_index} did not move during the window (0 J): "
                "the window is shorter than one counter update or the GPU did no work."
            )
        pct = gpu.counter_vs_trace_pct
        if pct is not None and abs(pct) > _MAX_TRACE_GAP_PCT:
            warnings.append(
                f"GPU {gpu.cuda_index}: the energy counter and the power-trace integral differ by "
                f"{pct:+.1f}%. The counter is used; the instant power field samples part of each 100 ms "
                "period, so a periodic load (decode) or a sparse trace skews the integral."
            )
    if breakdown.net_j is not None and breakdown.net_j < 0:
        warnings.append(
            f"Net energy is negative ({breakdown.net_j:.1f} J): the idle baseline "
            f"({breakdown.idle_power_w:.1f} W) is above the average power under load. The GPU was probably "
            "still hot or clocked up while idle was measured; report gross energy."
        )
    return warnings
