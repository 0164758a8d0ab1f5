"""Test helper: is a measured result physically plausible? Shared by the GPU suite and its CPU unit test.

Signs alone let a unit slip through (the energy counter counts millijoules: read as joules, every energy
is 1000x too large and still positive). ``implausibilities`` checks what physics allows, each check
computed from the result and its power trace, not from the figures the product derived from them:

* average power of each GPU over the measured windows lies between its idle power and its board power
  limit (NVML's enforced limit, ``environment_snapshot.gpus[].power_limit_w``);
* net energy is positive and below gross;
* the counter and the trace integral over the windows (recomputed here) agree within ``max_gap_pct``
  (10 %), on windows of at least ``min_window_s`` (10 s: long enough that the counter's ~100 ms update
  step and the trace's sampling do not matter);
* per-GPU energies sum to the total;
* the window-edge uncertainty is a small fraction (``max_edge_fraction``, 5 %) of the energy.
"""

from __future__ import annotations

from typing import Any

from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results.schema import ExperimentResult


def _windows(result: ExperimentResult) -> list[tuple[float, float]]:
    """The measured windows: one per cycle (the ``measure`` window when cycles are not recorded)."""
    if result.cycles is not None:
        return [(r.start_s, r.end_s) for r in result.cycles.records]
    window = result.windows["measure"]
    return [(window.start_s, window.end_s)]


def _limits_w(result: ExperimentResult) -> dict[int, float | None]:
    return {g.cuda_index: g.power_limit_w for g in result.environment_snapshot.gpus}


def implausibilities(
    result: ExperimentResult,
    trace: PowerTrace,
    *,
    min_window_s: float = 10.0,
    max_gap_pct: float = 10.0,
    max_edge_fraction: float = 0.05,
) -> list[str]:
    """What is physically implausible in ``result`` (with its ``trace``), one line each; [] when nothing."""
    energy = result.energy
    if energy is None or result.total_energy_j is None or not energy.per_gpu:
        return ["no energy was measured"]
    windows = _windows(result)
    problems = [
        f"a measured window lasted {b - a:.2f} s, under {min_window_s:g} s: configure a longer workload"
        for a, b in windows
        if b - a < min_window_s
    ]
    measured_s = sum(b - a for a, b in windows)
    limits = _limits_w(result)
    for gpu in energy.per_gpu:
        problems += _gpu_problems(gpu, measured_s, limits.get(gpu.cuda_index), trace, windows, max_gap_pct)
    problems += _total_problems(result, max_edge_fraction)
    return problems


def _gpu_problems(
    gpu: Any,
    measured_s: float,
    limit_w: float | None,
    trace: PowerTrace,
    windows: list[tuple[float, float]],
    max_gap_pct: float,
) -> list[str]:
    name = f"GPU {gpu.cuda_index}"
    avg_w = gpu.gross_j / measured_s
    out = []
    if gpu.idle_power_w is None or not 0 < gpu.idle_power_w < avg_w:
        out.append(f"{name}: average power {avg_w:.1f} W is not above its idle power {gpu.idle_power_w} W")
    if limit_w is None or avg_w > limit_w:
        out.append(f"{name}: average power {avg_w:.1f} W is above its board power limit {limit_w} W")
    parts = [trace.integrate_j(gpu.cuda_index, a, b) for a, b in windows]
    if any(p is None for p in parts):
        return [*out, f"{name}: the trace does not cover every measured window"]
    trace_j = sum(p for p in parts if p is not None)
    gap_pct = abs(gpu.gross_j - trace_j) / trace_j * 100 if trace_j > 0 else float("inf")
    if gap_pct >= max_gap_pct:
        out.append(
            f"{name}: counter {gpu.gross_j:.1f} J and trace integral {trace_j:.1f} J differ by "
            f"{gap_pct:.1f} % (at most {max_gap_pct:g} %)"
        )
    return out


def _total_problems(result: ExperimentResult, max_edge_fraction: float) -> list[str]:
    energy = result.energy
    assert energy is not None and result.total_energy_j is not None
    out = []
    summed = sum(g.gross_j for g in energy.per_gpu)
    if abs(summed - result.total_energy_j) > 1e-6 * max(abs(result.total_energy_j), 1.0):
        out.append(f"per-GPU energies sum to {summed} J, not the total {result.total_energy_j} J")
    if abs(energy.gross_j - result.total_energy_j) > 1e-6 * max(abs(result.total_energy_j), 1.0):
        out.append(f"energy.gross_j {energy.gross_j} J is not the total {result.total_energy_j} J")
    if energy.net_j is None or not 0 < energy.net_j < energy.gross_j:
        out.append(f"net energy {energy.net_j} J is not between 0 and gross {energy.gross_j} J")
    edge = energy.edge_uncertainty_j
    if edge is None or edge >= max_edge_fraction * energy.gross_j:
        out.append(
            f"edge uncertainty {edge} J is not below {max_edge_fraction:.0%} of the energy "
            f"({energy.gross_j:.1f} J)"
        )
    return out
