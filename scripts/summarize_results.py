# ruff: noqa: E501
"""Print what a folder of result.json files says about repeatability, phases, uncertainty and flags.

    python3 scripts/summarize_results.py RESULTS_DIR

One block per result: cycle windows, gross and net J/output token with CV and 95% interval, tok/s,
uncertainty, idle before/after, quality flags, phase energy, isolated prefill, latency, steady-state
trimming, idle settle, and per-GPU energy against the total (multi-GPU runs).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _interval(c: dict[str, Any], name: str) -> str:
    i = c.get(name)
    if not i or i.get("ci95_low") is None:
        return "n/a"
    return f"mean {i['mean']:.5g}  CV {i['cv_pct']:.2f}%  ci95 [{i['ci95_low']:.5g}, {i['ci95_high']:.5g}]"


def _block(r: dict[str, Any]) -> list[str]:
    cfg, c, u = r["config"], r["cycles"], r.get("uncertainty") or {}
    e = r.get("energy") or {}
    lines = [
        f"{r['model']} batch {cfg['batch_size']} n {cfg['n']} {cfg['max_input_tokens']}+{cfg['max_output_tokens']}"
        f" method {r['measurement_methodology']} gpus {len(r['environment_snapshot']['gpus'])}"
        f" hash {r['measurement_config_hash']}",
        f"  windows s       {[round(x['duration_s'], 2) for x in c['records']]}",
        f"  gross J/token   {_interval(c, 'energy_per_output_token_j_ci95')}",
        f"  net J/token     {_interval(c, 'net_energy_per_output_token_j_ci95')}",
        f"  tok/s           {_interval(c, 'output_tokens_per_s_ci95')}",
        f"  gross/net J     {e.get('gross_j')} / {e.get('net_j')}  idle W {e.get('idle_power_w')}",
        f"  uncertainty     gross +-{u.get('gross_j')} net +-{u.get('net_j')} (window edges {u.get('window_edges_j')},"
        f" idle edges {u.get('idle_edges_j')}) counter vs trace {u.get('counter_vs_trace_pct')}%",
        f"  idle before/after W {u.get('idle_before_w')} / {u.get('idle_after_w')}",
        f"  quality flags   {list(r['quality_flags']) or 'none'}",
        f"  warm-up         {r['warmup']['rule']} -> {r['warmup']['batches']} batches, settled {r['warmup']['settled']}",
    ]
    t = r.get("timings") or {}
    if t:
        outside = (t.get("total_s") or 0) - (t.get("measure_s") or 0) - (t.get("baseline_s") or 0)
        laps = " ".join(f"{k[:-2]} {v:.1f}" for k, v in t.items() if v is not None and k != "total_s")
        lines.append(
            f"  timings s       total {t.get('total_s', 0):.1f} outside window+baseline {outside:.1f}: {laps}"
        )
    comp = r.get("compute") or {}
    if comp:
        lines.append(
            f"  compute         mfu {comp.get('mfu')} bandwidth util {comp.get('memory_bandwidth_util')}"
        )
    per_gpu = e.get("per_gpu") or []
    if len(per_gpu) > 1:
        parts = " + ".join(f"gpu{g['cuda_index']} {g['gross_j']:.1f}" for g in per_gpu)
        lines.append(
            f"  per GPU J       {parts} = {sum(g['gross_j'] for g in per_gpu):.3f} (total {e['gross_j']:.3f})"
        )
    if r.get("phase_energy"):
        p = r["phase_energy"]
        lines.append(
            f"  phases J        prefill {p['prefill_j']:.1f} ({p['prefill_s']:.2f} s) decode {p['decode_j']:.1f}"
            f" ({p['decode_s']:.2f} s) other {p['other_j']:.1f}"
        )
    if r.get("prefill_isolated"):
        p = r["prefill_isolated"]
        lines.append(
            f"  prefill alone   {p['passes']} passes x {p['batches_per_pass']} batches in {p['duration_s']:.2f} s:"
            f" {p['per_pass_j']} J/pass, {p['per_input_token_j']} J/input token (net {p['net_per_input_token_j']})"
        )
    lat = r.get("latency") or {}
    if lat:
        lines.append(
            f"  latency s       TTFT p50 {lat.get('ttft_p50_s')} ITL p50/p90/p99 {lat.get('itl_p50_s')}"
            f" / {lat.get('itl_p90_s')} / {lat.get('itl_p99_s')}"
        )
    if r.get("steady_state"):
        s = r["steady_state"]
        lines.append(
            f"  steady state    trimmed {s['trimmed_batches']} ramp s {[round(x, 2) for x in s['ramp_s']]}"
            f" full windows J {s['full_window_gross_j']}"
        )
    if r.get("idle_settle"):
        s = r["idle_settle"]
        lines.append(
            f"  idle settle     settled {s['settled']} after {s['waited_s']:.1f} s: {s['first_w']} -> {s['last_w']} W"
        )
    comp = r.get("compute") or {}
    lines.append(
        f"  mfu {comp.get('mfu')} J/TFLOP {comp.get('energy_per_tflop_j')} warnings {len(r['warnings'])}"
    )
    return lines


def main(folder: str) -> None:
    for path in sorted(Path(folder).glob("*/result.json")):
        print("\n".join(_block(json.loads(path.read_text()))))


if __name__ == "__main__":
    main(sys.argv[1])
