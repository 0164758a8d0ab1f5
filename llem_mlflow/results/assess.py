"""How far a measurement can be trusted: the uncertainty block and the quality flags.

Uncertainty of net energy (``net = gross - idle_w x window_s``), a worst-case linear sum of:

* window edges: the counter updates every ~0.1 s, so each measured window's two edges can each be
  one update stale: sum over windows and GPUs of (power at the edge x 0.1 s) (``edge_uncertainty_j``);
* idle-baseline edges: the idle window has the same two stale edges; that error in idle joules,
  divided by the idle duration, is an error in idle watts, multiplied by the measured seconds;
* sensor gain: NVML power has about +-5 % gain error per board (published studies; configurable).
  Gross and idle share the board, so the gain error scales net by the same factor: gain x |net|.

Gross energy's uncertainty is window edges + gain x gross. Quality flags (``quality.evaluate``)
become result warnings and ``llem.quality.<name>`` tags. Idle before the window is the median of
the trace over the counter baseline; idle after is the median of the trace over the same length of
model-resident idle after the last cycle. Pure Python.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from llem_mlflow.figures import quality
from llem_mlflow.measure.records import EnergyBreakdown
from llem_mlflow.measure.trace import IntField, PowerTrace
from llem_mlflow.protocols import GpuInfo
from llem_mlflow.results.records import Uncertainty

Span = tuple[float, float]


def median_power_w(trace: PowerTrace, gpus: Sequence[int], span: Span | None) -> float | None:
    """Sum over ``gpus`` of the median trace power inside ``span``; None when a GPU has no sample."""
    if span is None:
        return None
    total = 0.0
    for gpu in gpus:
        powers = trace.powers_between(gpu, span[0], span[1])
        if not powers:
            return None
        total += statistics.median(powers)
    return total


def idle_edges_j(
    breakdown: EnergyBreakdown, trace: PowerTrace, idle: Span | None, measured_s: float
) -> float | None:
    """The idle baseline's edge error carried into net energy (see the module docstring)."""
    if idle is None or breakdown.idle_duration_s is None or breakdown.idle_duration_s <= 0:
        return None
    edges = 0.0
    for gpu in breakdown.per_gpu:
        for edge_s in idle:  # the power at each edge, as for the measured windows' edges
            power_w = trace.nearest_power_w(gpu.cuda_index, edge_s)  # bisects: O(log n)
            if power_w is None:
                return None
            edges += power_w
    return edges * breakdown.counter_update_s / breakdown.idle_duration_s * measured_s


def uncertainty(
    breakdown: EnergyBreakdown,
    trace: PowerTrace,
    idle: Span | None,
    measured_s: float,
    gain_pct: float,
) -> Uncertainty:
    """The uncertainty block of one result (all cycles together)."""
    window = breakdown.edge_uncertainty_j
    idle_j = idle_edges_j(breakdown, trace, idle, measured_s)
    gross = breakdown.gross_j
    gross_bound = None if window is None or gross is None else window + gain_pct / 100 * gross
    net_bound = None
    if breakdown.net_j is not None and window is not None and idle_j is not None:
        net_bound = window + idle_j + gain_pct / 100 * abs(breakdown.net_j)
    gaps = [g.counter_vs_trace_pct for g in breakdown.per_gpu if g.counter_vs_trace_pct is not None]
    return Uncertainty(
        window_edges_j=window,
        idle_edges_j=idle_j,
        gain_pct=gain_pct,
        gross_j=gross_bound,
        net_j=net_bound,
        counter_vs_trace_pct=max(gaps, key=abs) if gaps else None,
    )


def quality_inputs(
    *,
    breakdown: EnergyBreakdown | None,
    unc: Uncertainty | None,
    trace: PowerTrace,
    infos: Sequence[GpuInfo],
    windows: Sequence[Span],
    idle_before_w: float | None,
    idle_after_w: float | None,
    output_tokens: int,
) -> quality.QualityInputs:
    """What the quality rules read, from one run's pieces: all windows together (see ``flags``)."""
    gpus = [g.cuda_index for g in infos]
    limits = [g.power_limit_w for g in infos]
    return quality.QualityInputs(
        window_s=sum(w[1] - w[0] for w in windows),
        output_tokens=output_tokens,
        net_j=breakdown.net_j if breakdown else None,
        net_uncertainty_j=unc.net_j if unc else None,
        throttle_reasons=_inside(trace, gpus, windows, "throttle_reasons"),
        temperatures_c=_hottest_gpu_temperatures(trace, gpus, windows),
        idle_before_w=idle_before_w,
        idle_after_w=idle_after_w,
        other_processes=_other_processes(_inside(trace, gpus, windows, "compute_processes")),
        energy_per_token_j=_per_token(breakdown.gross_j if breakdown else None, output_tokens),
        unknown_gpu_windows=breakdown.unknown_gpu_windows if breakdown else 0,
        gpu_windows=len(gpus) * len(windows),
        power_limit_w=sum(x for x in limits if x is not None) if limits and None not in limits else None,
    )


def _per_token(gross_j: float | None, output_tokens: int) -> float | None:
    return gross_j / output_tokens if gross_j is not None and output_tokens else None


def _inside(
    trace: PowerTrace, gpus: Sequence[int], windows: Sequence[Span], name: IntField
) -> list[int | None]:
    """The known values of one int reading in the windows, every GPU (bisected: no walk of the trace)."""
    return [v for gpu in gpus for w in windows for v in trace.readings_between(gpu, w[0], w[1], name)]


def _other_processes(counts: Sequence[int | None]) -> int | None:
    """Most other compute processes any sample saw: NVML's count less this process (``quality`` docstring).

    None when no sample has a count; a count of 0 (NVML sees no process, e.g. in a container) is 0 others.
    """
    return max((max(count - 1, 0) for count in counts if count is not None), default=None)


def flags(inputs: quality.QualityInputs, windows: Sequence[Span]) -> list[quality.QualityFlag]:
    """``quality.evaluate`` over all windows together, except ``short_window``: the shortest window decides.

    The energy-per-token ceiling needs the total measured seconds and tokens; shortness is a property
    of each window (each has its own two stale counter edges).
    """
    out = [f for f in quality.evaluate(inputs) if f.name != "short_window"]
    shortest = min((w[1] - w[0] for w in windows), default=0.0)
    short = quality.check_short_window(shortest, inputs.counter_update_s, inputs.steady_state_requested)
    return [*out, short] if short else out


def _hottest_gpu_temperatures(
    trace: PowerTrace, gpus: Sequence[int], windows: Sequence[Span]
) -> list[float | None]:
    """The window temperatures of the GPU whose temperature rose most (rules read one GPU's series)."""
    if not windows:
        return []
    best: list[float | None] = []
    best_rise = float("-inf")
    for gpu in gpus:
        known = trace.readings_between(gpu, windows[0][0], windows[-1][1], "temperature_c")  # no absent
        series: list[float | None] = list(known)
        valid = known
        rise = valid[-1] - valid[0] if len(valid) >= 2 else float("-inf")
        if rise > best_rise or not best:
            best, best_rise = series, rise
    return best
