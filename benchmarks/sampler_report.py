"""The report of the sampler overhead benchmark (``sampler_overhead.py``): per workload and condition, the
summary written to the JSON (paired median ratio and its interval, the quiet floor, the sampler thread's CPU,
samples and buffer reads per second, the amplified estimate's fields, and the targets each estimator meets),
and the rows and headers of the two printed tables (per condition; per workload's amplified estimate)."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

import bench_common as bc
from sampler_runs import Condition, Run
from sampler_stats import (
    FLOOR_Q,
    TARGET_RATIO,
    amplified_narrow,
    floor_interval,
    floor_ratio,
    median_interval,
    narrow,
    ratios,
    reads_per_s,
)

from llem_mlflow.measure.power_buffer import BUFFER_READ_PERIOD_S

TARGET_CORE_PCT = 1.0


def summarize(
    name: str,
    cond: Condition,
    blocks: list[dict[str | None, Run]],
    n: int,
    args: Any,
    fit: dict[str, Any] | None,
) -> dict[str, Any]:
    """Paired ratios, their median's 95 % interval and the sampler's CPU for one workload and condition."""
    on = [b[cond.name] for b in blocks]
    paired = ratios(blocks, cond.name)
    interval = median_interval(paired)
    core_pct = [100 * (r.sampler_cpu_s or 0.0) / r.wall_s for r in on]
    devices = max(1, len(on[0].sources))
    rate = [max(0, (r.samples or 0) - 2 * devices) / devices / r.wall_s for r in on]  # less start/stop
    ratio = bc.spread(paired)
    floor, floor_ci = floor_ratio(blocks, cond.name), floor_interval(blocks, cond.name)
    return {
        "workload": name,
        "mode": cond.name,
        "sampler_mode": cond.mode,
        "iterations_per_run": n,
        "interval_s": args.interval_s,
        "devices": devices,
        "sources": sorted({f"{g}:{s}" for r in on for g, s in r.sources.items()}),
        "run_s_median": statistics.median(b[None].wall_s for b in blocks),
        "ratio_mode_none": ratio,
        "ratio_median_ci95": interval,
        "overhead_pct_median": 100 * (ratio["median"] - 1),
        "floor_quantile": FLOOR_Q,
        "ratio_floor": floor,
        "ratio_floor_ci95": floor_ci,
        "overhead_pct_floor": 100 * (floor - 1),
        "meets_ratio_target_floor": floor_ci is not None and floor_ci[1] <= TARGET_RATIO,
        "sampler_thread_core_pct": bc.spread(core_pct),
        "samples_per_s_per_device_median": statistics.median(rate),
        "meets_ratio_target": ratio["median"] <= TARGET_RATIO,
        "resolved": narrow(interval, args.resolve_pct),
        "resolved_floor": narrow(floor_ci, args.resolve_pct),
        "meets_cpu_target": statistics.median(core_pct) < TARGET_CORE_PCT,
        **amplified_fields(cond, statistics.median(reads_per_s(r) for r in on), fit, args.resolve_pct),
        "runs": [asdict(r) for r in on],
    }


def amplified_fields(
    cond: Condition, rate: float, fit: dict[str, Any] | None, width_pct: float
) -> dict[str, Any]:
    """A condition's read rate and, for a buffer condition with a fit, the model's overhead at that rate
    and the amplified estimate of the product's overhead."""
    use = fit if cond.mode == "buffer" else None
    return {
        "buffer_period_s": cond.buffer_period_s if cond.mode in ("buffer", "auto") else None,
        "buffer_reads_per_s_median": rate,
        "overhead_pct_model": None if use is None else 100 * use["slope_per_read_per_s"] * rate,
        "overhead_pct_amplified": None if use is None else use["overhead_pct_amplified"],
        "overhead_pct_amplified_ci95": None if use is None else use["overhead_pct_amplified_ci95"],
        "meets_ratio_target_amplified": None if use is None else use["meets_ratio_target_amplified"],
        "resolved_amplified": use is not None and amplified_narrow(use, width_pct),
    }


def meets_by(s: dict[str, Any]) -> str:
    """The estimators whose ratio target the summary meets (median, floor, amplified), or "-"."""
    met = [
        way
        for way, key in (
            ("median", "meets_ratio_target"),
            ("floor", "meets_ratio_target_floor"),
            ("amplified", "meets_ratio_target_amplified"),
        )
        if s[key]
    ]
    return ",".join(met) or "-"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def row(s: dict[str, Any]) -> list[Any]:
    """One table row of a workload and condition summary."""
    r, c, ci = s["ratio_mode_none"], s["sampler_thread_core_pct"], s["ratio_median_ci95"]
    fci = s["ratio_floor_ci95"]
    ok = "yes" if s["meets_ratio_target"] and s["meets_cpu_target"] else "NO"
    return [
        s["workload"],
        s["mode"],
        ",".join(s["sources"]),
        r["n"],
        f"{s['run_s_median']:.3f}",
        f"{r['median']:.4f}",
        "-" if ci is None else f"{ci[0]:.4f}-{ci[1]:.4f}",
        "yes" if s["resolved"] else "no",
        f"{s['overhead_pct_median']:+.2f}",
        f"{s['overhead_pct_floor']:+.2f}",
        "-" if fci is None else f"{fci[0]:.4f}-{fci[1]:.4f}",
        "yes" if s["resolved_floor"] else "no",
        f"{s['buffer_reads_per_s_median']:.1f}",
        _pct(s["overhead_pct_model"]),
        f"{c['median']:.3f} (max {c['max']:.3f})",
        f"{s['samples_per_s_per_device_median']:.1f}",
        ok,
        meets_by(s) if s["meets_cpu_target"] else "- (cpu)",
    ]


HEADERS = [
    "workload",
    "mode",
    "sources",
    "pairs",
    "run s",
    "ratio mode/none",
    "95% CI (median)",
    "resolved",
    "overhead %",
    "floor overhead %",
    "95% CI (floor)",
    "floor resolved",
    "reads/s",
    "model overhead %",
    "sampler thread % core",
    "samples/s/dev",
    "meets target",
    "meets by",
]


def amplified_row(fit: dict[str, Any], width_pct: float) -> list[Any]:
    """One table row of a workload's amplified estimate."""
    ci, pct_ci = fit["slope_ci95"], fit["overhead_pct_amplified_ci95"]
    return [
        fit["workload"],
        fit["pairs"],
        fit["points"],
        f"{100 * fit['slope_per_read_per_s']:+.4f}",
        "-" if ci is None else f"{100 * ci[0]:+.4f} .. {100 * ci[1]:+.4f}",
        f"{fit['overhead_pct_amplified']:+.3f}",
        "-" if pct_ci is None else f"{pct_ci[0]:+.3f} .. {pct_ci[1]:+.3f}",
        "yes" if amplified_narrow(fit, width_pct) else "no",
        "yes" if fit["meets_ratio_target_amplified"] else "NO",
    ]


AMPLIFIED_HEADERS = [
    "workload",
    "pairs",
    "buffer runs",
    "c: % per read/s",
    "95% CI (c)",
    f"overhead % at {1 / BUFFER_READ_PERIOD_S:g} read/s",
    "95% CI",
    "resolved",
    "meets target",
]
