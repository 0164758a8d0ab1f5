"""The server-scenario table of docs/serving.md from result.json files (server runs and in-process runs).

    python3 scripts/serving_table.py RESULTS_DIR [RESULTS_DIR ...]

One Markdown row per result (every ``*/result.json`` under the folders), sorted by model, scenario and
concurrency: gross and net J per output token (mean over cycles with its 95 % interval where there are
>= 3 cycles), net J per request (mean of the per-request apportioned energies), steady-state gross J per
output token, TTFT and ITL p50/p99, output tok/s with its interval, the steady window's occupancy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HEADERS = (
    "model", "way", "conc.", "cycles", "gross J/tok [95 %]", "net J/tok [95 %]", "net J/request",
    "steady gross J/tok", "TTFT p50/p99 ms", "ITL p50/p99 ms", "tok/s [95 %]", "occupancy",
)  # fmt: skip


def _g(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _interval(block: dict[str, Any] | None, digits: int = 3) -> str:
    if not block or block.get("mean") is None:
        return "-"
    low, high = block.get("ci95_low"), block.get("ci95_high")
    bounds = f" [{_g(low, digits)}, {_g(high, digits)}]" if low is not None else ""
    return f"{_g(block['mean'], digits)}{bounds}"


def _ms(stats: dict[str, Any] | None) -> str:
    if not stats or stats.get("p50") is None:
        return "-"
    p99 = "-" if stats.get("p99") is None else f"{stats['p99'] * 1000:.1f}"
    return f"{stats['p50'] * 1000:.1f} / {p99}"


def _latency(r: dict[str, Any]) -> dict[str, Any]:
    s = r.get("serving") or {}
    if s.get("latency"):
        return dict(s["latency"])
    lat = r.get("latency") or {}  # in-process: flat keys, TTFT has no p99
    ttft = {"p50": lat.get("ttft_p50_s"), "p99": lat.get("ttft_p99_s")}
    return {"ttft_s": ttft, "itl_s": {"p50": lat.get("itl_p50_s"), "p99": lat.get("itl_p99_s")}}


def row(r: dict[str, Any]) -> tuple[tuple[Any, ...], list[str]]:
    """(sort key, cells) of one result."""
    s = r.get("serving") or {}
    c = r.get("cycles") or {}
    server = r.get("scenario") == "server"
    steady = [w for w in s.get("steady") or [] if w.get("energy_per_output_token_j") is not None]
    steady_j = sum(w["energy_per_output_token_j"] for w in steady) / len(steady) if steady else None
    occupancy = [w["occupancy"] for w in s.get("steady") or [] if w.get("occupancy") is not None]
    per_request = s.get("net_per_request_j")  # the mean over requests (a number)
    lat = _latency(r)
    conc = s.get("concurrency") if server else r["config"]["batch_size"]
    model = Path(str(r["model"])).name
    kind = "continuous " if r["config"].get("batching") == "continuous" else "b"
    way = f"server ({s.get('engine')})" if server else f"in-process {kind}{conc}"
    cells = [
        model, way, str(conc if server else "-"), str(c.get("n", 1)),
        _interval(c.get("energy_per_output_token_j_ci95")),
        _interval(c.get("net_energy_per_output_token_j_ci95")),
        _g(per_request.get("mean") if isinstance(per_request, dict) else per_request), _g(steady_j),
        _ms(lat.get("ttft_s")), _ms(lat.get("itl_s")), _interval(c.get("output_tokens_per_s_ci95"), 4),
        f"{100 * sum(occupancy) / len(occupancy):.0f} %" if occupancy else "-",
    ]  # fmt: skip
    return (model, not server, conc or 0), cells


def main(folders: list[str]) -> None:
    rows = [row(json.loads(p.read_text())) for f in folders for p in sorted(Path(f).glob("**/result.json"))]
    print("| " + " | ".join(HEADERS) + " |")
    print("|" + "---|" * len(HEADERS))
    for _, cells in sorted(rows, key=lambda kv: kv[0]):
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
