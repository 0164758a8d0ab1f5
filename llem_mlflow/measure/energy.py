"""Energy from counter windows: the idle baseline, the per-GPU and summed breakdown, and its warnings.

Energy is the delta of NVML's cumulative energy counter over a window (``counters``: the CUDA-synced
edges); the power trace only cross-checks it and bounds the edge quantisation. The counter updates
every ~100 ms, so each edge can be one update stale: ``edge_uncertainty_j`` states that bound.

A GPU in ``CounterWindow.unknown`` (its delta could not be taken, docs/reliability/nvml-faults.md)
gets a null gross in the breakdown, and so does the window's total (the known part goes to
``partial_gross_j``, never presented as a total); net energy is then null, and ``fault_warnings``
says so. The window functions of ``counters`` are re-exported here for callers that read them as
``energy.measure_window`` and the like.
"""

from __future__ import annotations

from collections.abc import Sequence

from llem_mlflow.errors import DeviceError
from llem_mlflow.measure.counters import (
    COUNTER_WRAP_J,
    MAX_BOARD_POWER_W,
    READ_ATTEMPTS,
    RETRY_SLEEPS_S,
    CounterMark,
    CounterWindow,
    measure_idle,
    measure_window,
    read_mark,
    read_start,
    window_between,
)
from llem_mlflow.measure.records import EnergyBreakdown, GpuEnergy
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.protocols import GpuInfo

__all__ = [
    "COUNTER_WRAP_J",
    "IDLE_EFFECT",
    "MAX_BOARD_POWER_W",
    "MEASURED_EFFECT",
    "PREFILL_EFFECT",
    "READ_ATTEMPTS",
    "RETRY_SLEEPS_S",
    "TRACE_MIN_COVERAGE",
    "TRACE_MIN_EXPECTED",
    "CounterMark",
    "CounterWindow",
    "build_breakdown",
    "energy_warnings",
    "fault_warnings",
    "measure_idle",
    "measure_window",
    "read_mark",
    "read_start",
    "sparse_trace_warnings",
    "sum_breakdowns",
    "trace_too_sparse",
    "window_between",
]

_MIN_COUNTER_UPDATES = 10
_MAX_TRACE_GAP_PCT = 10.0

#: A window that should hold at least this many trace samples of a GPU ...
TRACE_MIN_EXPECTED = 10
#: ... and holds fewer than this fraction of them is too sparse for the counter vs trace cross-check.
TRACE_MIN_COVERAGE = 0.5


def _nearest_power_w(trace: PowerTrace, gpu: int, at_s: float) -> float | None:
    return trace.nearest_power_w(gpu, at_s)  # bisects: O(log n) per edge


def _idle_power_w(gpu: int, idle: CounterWindow | None) -> float | None:
    if idle is None or gpu not in idle.energy_j or idle.duration_s <= 0:
        return None
    return idle.energy_j[gpu] / idle.duration_s


def trace_too_sparse(trace: PowerTrace, gpu: int, start_s: float, end_s: float) -> bool:
    """True when the window should hold >= 10 samples of ``gpu`` and holds under half of them.

    Power reads that failed (the sampler skips them) or a lost GPU leave such gaps; the counter vs
    trace cross-check is then skipped rather than computed from a trace that misses part of the window.
    """
    expected = (end_s - start_s) / trace.interval_s
    if expected < TRACE_MIN_EXPECTED:
        return False
    return trace.count_between(gpu, start_s, end_s) < TRACE_MIN_COVERAGE * expected


def _gpu_energy(
    gpu: GpuInfo, window: CounterWindow, idle: CounterWindow | None, trace: PowerTrace
) -> GpuEnergy:
    index = gpu.cuda_index
    if index not in window.energy_j:
        raise DeviceError(f"No counter reading for GPU {index} in the measured window; this is a bug.")
    gross_j = window.energy_j[index]
    idle_w = _idle_power_w(index, idle)
    sparse = trace_too_sparse(trace, index, window.start_s, window.end_s)
    trace_j = None if sparse else trace.integrate_j(index, window.start_s, window.end_s)
    return GpuEnergy(
        cuda_index=index,
        uuid=gpu.uuid,
        gross_j=gross_j,
        idle_power_w=idle_w,
        net_j=None if idle_w is None else gross_j - idle_w * window.duration_s,
        trace_integral_j=trace_j,
        counter_vs_trace_pct=None if trace_j is None or gross_j <= 0 else (gross_j - trace_j) / gross_j * 100,
        samples_in_window=trace.count_between(index, window.start_s, window.end_s),
    )


def _edge_uncertainty_j(
    window: CounterWindow, trace: PowerTrace, gpus: Sequence[GpuInfo], counter_update_s: float
) -> float | None:
    """Sum over GPUs of (power at start edge + power at end edge) x one counter update; None without trace."""
    total_j = 0.0
    for gpu in gpus:
        start_w = _nearest_power_w(trace, gpu.cuda_index, window.start_s)
        end_w = _nearest_power_w(trace, gpu.cuda_index, window.end_s)
        if start_w is None or end_w is None:
            return None
        total_j += (start_w + end_w) * counter_update_s
    return total_j


def _sum_or_none(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _unknown_gpu(gpu: GpuInfo, idle: CounterWindow | None) -> GpuEnergy:
    """A GPU whose counter delta in the window is unknown: no gross, no net, no cross-check."""
    return GpuEnergy(
        cuda_index=gpu.cuda_index,
        uuid=gpu.uuid,
        gross_j=None,
        unknown_windows=1,
        idle_power_w=_idle_power_w(gpu.cuda_index, idle),
    )


def _partial_sum(known: Sequence[float | None], unknown: int) -> tuple[float | None, float | None]:
    """(gross, partial): the sum as gross when nothing is unknown, else as partial (None if none known)."""
    values = [v for v in known if v is not None]
    if not unknown:
        return sum(values), None
    return None, (sum(values) if values else None)


def build_breakdown(
    window: CounterWindow,
    idle: CounterWindow | None,
    trace: PowerTrace,
    gpus: Sequence[GpuInfo],
    counter_update_s: float = 0.1,
) -> EnergyBreakdown:
    """Gross, idle, net energy per GPU and summed, with the trace cross-check and edge uncertainty.

    A GPU in ``window.unknown`` is listed in ``per_gpu`` with a null gross; the window's ``gross_j``,
    ``net_j`` and ``edge_uncertainty_j`` are then null and ``partial_gross_j`` holds the known GPUs'
    sum (docs/reliability/nvml-faults.md).
    """
    per_gpu = [
        _unknown_gpu(gpu, idle) if gpu.cuda_index in window.unknown else _gpu_energy(gpu, window, idle, trace)
        for gpu in gpus
    ]
    unknown = sum(g.unknown_windows for g in per_gpu)
    gross_j, partial_j = _partial_sum([g.gross_j for g in per_gpu], unknown)
    return EnergyBreakdown(
        gross_j=gross_j,
        partial_gross_j=partial_j,
        unknown_gpu_windows=unknown,
        idle_power_w=_sum_or_none([_idle_power_w(gpu.cuda_index, idle) for gpu in gpus]),
        idle_duration_s=None if idle is None else idle.duration_s,
        net_j=None if unknown else _sum_or_none([g.net_j for g in per_gpu]),
        edge_uncertainty_j=None if unknown else _edge_uncertainty_j(window, trace, gpus, counter_update_s),
        counter_update_s=counter_update_s,
        per_gpu=per_gpu,
    )


def sum_breakdowns(parts: Sequence[EnergyBreakdown]) -> EnergyBreakdown:
    """The breakdown of several measured windows together (cycles): energies and edge bounds add up.

    Gross, net, trace integrals and edge uncertainties are sums (each window has its own two edges);
    idle power is the one baseline all windows share; counter vs trace is recomputed from the sums.
    A GPU whose counter delta is unknown in some window has a null gross (the known windows' sum in
    ``partial_gross_j``) and no net or trace sum; so has the total.
    """
    if len(parts) == 1:
        return parts[0]
    gpus = dict.fromkeys(g.cuda_index for p in parts for g in p.per_gpu)
    per_gpu = [_sum_gpu([g for p in parts for g in p.per_gpu if g.cuda_index == i], len(parts)) for i in gpus]
    first = parts[0]
    unknown = sum(p.unknown_gpu_windows for p in parts)
    gross_j, partial_j = _partial_sum(
        [p.partial_gross_j if p.gross_j is None else p.gross_j for p in parts], unknown
    )
    return EnergyBreakdown(
        gross_j=gross_j,
        partial_gross_j=partial_j,
        unknown_gpu_windows=unknown,
        idle_power_w=first.idle_power_w,
        idle_duration_s=first.idle_duration_s,
        net_j=_sum_or_none([p.net_j for p in parts]),
        edge_uncertainty_j=_sum_or_none([p.edge_uncertainty_j for p in parts]),
        counter_update_s=first.counter_update_s,
        per_gpu=per_gpu,
    )


def _sum_gpu(parts: Sequence[GpuEnergy], windows: int) -> GpuEnergy:
    """One GPU over ``windows`` windows; a window missing from ``parts`` counts as unknown."""
    unknown = sum(g.unknown_windows for g in parts) + windows - len(parts)
    gross_j, partial_j = _partial_sum([g.gross_j for g in parts], unknown)
    trace_j = None if unknown else _sum_or_none([g.trace_integral_j for g in parts])
    return GpuEnergy(
        cuda_index=parts[0].cuda_index,
        uuid=parts[0].uuid,
        gross_j=gross_j,
        partial_gross_j=partial_j,
        unknown_windows=unknown,
        idle_power_w=parts[0].idle_power_w,
        net_j=None if unknown else _sum_or_none([g.net_j for g in parts]),
        trace_integral_j=trace_j,
        counter_vs_trace_pct=(
            None
            if trace_j is None or gross_j is None or gross_j <= 0
            else (gross_j - trace_j) / gross_j * 100
        ),
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


#: What an unknown counter delta does to the result, by the window it is in (see ``fault_warnings``).
MEASURED_EFFECT = (
    "its energy in this window is unknown: total_energy_j, energy.gross_j and the figures derived from "
    "them (energy per token, phase energy, carbon), this cycle's energy figures, and net energy and the "
    "edge uncertainty are null; the known part is in energy.partial_gross_j and the per-GPU "
    "partial_gross_j, and energy intervals rest on the other cycles"
)
IDLE_EFFECT = "its idle power is unknown, so energy.idle_power_w and net energy are null"
PREFILL_EFFECT = (
    "its energy in this window is unknown, so prefill_isolated.gross_j and its per-pass, per-token and "
    "net figures are null"
)


def fault_warnings(label: str, window: CounterWindow, effect: str) -> list[str]:
    """One warning per GPU of ``window`` whose delta is unknown (stating ``effect``) or crossed the wrap."""
    out = [f"GPU {gpu}, {label}: {reason.rstrip('.')}; {effect}." for gpu, reason in window.unknown.items()]
    out += [
        f"GPU {gpu}, {label}: the energy counter wrapped past 2^64 mJ; the delta was taken across the "
        "wrap (exact to a few J)."
        for gpu in window.wrapped
    ]
    return out


def sparse_trace_warnings(
    label: str, window: CounterWindow, trace: PowerTrace, gpus: Sequence[int]
) -> list[str]:
    """A warning per GPU whose trace in ``window`` is too sparse for the counter vs trace cross-check."""
    out = []
    for gpu in gpus:
        if gpu in window.energy_j and trace_too_sparse(trace, gpu, window.start_s, window.end_s):
            held = trace.count_between(gpu, window.start_s, window.end_s)
            out.append(
                f"GPU {gpu}, {label}: the power trace holds {held} samples where about "
                f"{window.duration_s / trace.interval_s:.0f} were expected (power readings failed or the "
                "GPU was lost); the counter vs trace cross-check is skipped for it (its trace_integral_j "
                "and counter_vs_trace_pct are null). The energy is still the counter's."
            )
    return out
