"""The server-scenario table of docs/serving.md from result.json files (server runs and in-process runs).

    python3 scripts/serving_table.py RESULTS_DIR [RESULTS_DIR ...]

One Markdown row per result (every ``*/result.json`` under the folders), sorted by model, scenario and
concurrency: gross and net J per output token (mean over cycles with its 95 % interval where there are
>= 3 cycles), net J per request, steady-state gross J per output token, TTFT and ITL p50/p99, output
tok/s with its interval, the steady window's occupancy; then the note below the table (``NOTE``).

A server run's net J/request and latency percentiles come from ``serving.cycle_intervals`` (each taken
per cycle, shown as their mean over cycles [95 % interval]); a result written before that field gets
them recomputed from its ``requests.parquet`` by the same code (``figures.serving_cycles``), except that
the parquet has no chunk times: ITL there uses ``end_s`` for the last chunk (marked ``*``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HEADERS = (
    "model", "way", "conc.", "cycles", "gross J/tok [95 %]", "net J/tok [95 %]", "net J/request [95 %]",
    "steady gross J/tok", "TTFT p50 / p99 ms [95 %]", "ITL p50 / p99 ms [95 %]", "tok/s [95 %]", "occupancy",
)  # fmt: skip
NOTE = (
    "Server rows with 2+ cycles: net J/request and the latency percentiles are taken per cycle and shown "
    "as their mean over cycles [95 % interval, from 3 cycles] (the mean of per-cycle p99s is not the p99 "
    "over all requests); otherwise net J/request = net energy / completed requests and the percentiles "
    "are over all requests. * a result written before serving.cycle_intervals: its per-cycle figures are "
    "recomputed from requests.parquet, which has no chunk times, so ITL there uses the stream's end "
    "(end_s, a little after the last chunk) instead of the last chunk: slightly high."
)


def _g(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def _interval(block: dict[str, Any] | None, digits: int = 3) -> str:
    if not block or block.get("mean") is None:
        return "-"
    low, high = block.get("ci95_low"), block.get("ci95_high")
    bounds = f" [{_g(low, digits)}, {_g(high, digits)}]" if low is not None else ""
    return f"{_g(block['mean'], digits)}{bounds}"


def _ms_interval(block: dict[str, Any]) -> str:
    """``39.3 [35.1, 44]``: an interval of seconds in ms (the mean to 0.1 ms, the bounds to 3 digits)."""
    low, high = block.get("ci95_low"), block.get("ci95_high")
    bounds = f" [{_g(low * 1000)}, {_g(high * 1000)}]" if low is not None and high is not None else ""
    return f"{block['mean'] * 1000:.1f}{bounds}"


def _ms(stats: dict[str, Any] | None, name: str, cycles: dict[str, Any] | None) -> str:
    """``p50 / p99`` in ms: each cycle-interval of ``name`` where there is one, else the pooled value."""
    parts = []
    for q in ("p50", "p99"):
        block = (cycles or {}).get(f"{name}_{q}_s")
        pooled = (stats or {}).get(q)
        if block and block.get("mean") is not None:
            parts.append(_ms_interval(block))
        else:
            parts.append("-" if pooled is None else f"{pooled * 1000:.1f}")
    return "-" if parts == ["-", "-"] else " / ".join(parts)


def recompute_intervals(r: dict[str, Any], parquet: Path) -> dict[str, Any] | None:
    """``serving.cycle_intervals`` of an older server result, from its requests.parquet and per-cycle net
    energies; the cycles cut short are left out, as in the run. ITL uses ``end_s`` (no chunk times)."""
    import pyarrow.parquet as pq

    from llem_mlflow.figures.serving_cycles import serving_intervals
    from llem_mlflow.served import RequestRecord

    rows = pq.read_table(parquet).to_pylist()
    cycles = [c for c in (r.get("cycles") or {}).get("records") or [] if c.get("partial") is None]
    cycles = cycles or (r.get("cycles") or {}).get("records") or []
    records: dict[int, list[Any]] = {c["index"]: [] for c in cycles}
    for row in rows:
        if row["cycle"] in records:
            records[row["cycle"]].append(_record(row, RequestRecord))
    found = serving_intervals(list(records.values()), [c.get("net_j") for c in cycles])
    return None if found is None else found.model_dump(mode="json")


def _record(row: dict[str, Any], record: Any) -> Any:
    """A ``RequestRecord`` from one parquet row: no chunk times (``chunk_s`` empty)."""
    return record(
        index=row["index"],
        sent_s=row["sent_s"],
        end_s=row["end_s"],
        first_token_s=row["first_token_s"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        error=row["error"],
        cycle=row["cycle"],
    )


def cycle_intervals(r: dict[str, Any], folder: Path | None) -> tuple[dict[str, Any] | None, bool]:
    """(the server's per-cycle intervals, whether they were recomputed from requests.parquet)."""
    s = r.get("serving") or {}
    if "cycle_intervals" in s:
        return s["cycle_intervals"], False
    parquet = folder / "requests.parquet" if folder is not None else None
    if r.get("scenario") != "server" or parquet is None or not parquet.is_file():
        return None, False
    found = recompute_intervals(r, parquet)
    return found, found is not None


def _latency(r: dict[str, Any]) -> dict[str, Any]:
    s = r.get("serving") or {}
    if s.get("latency"):
        return dict(s["latency"])
    lat = r.get("latency") or {}  # in-process: flat keys, TTFT has no p99
    ttft = {"p50": lat.get("ttft_p50_s"), "p99": lat.get("ttft_p99_s")}
    return {"ttft_s": ttft, "itl_s": {"p50": lat.get("itl_p50_s"), "p99": lat.get("itl_p99_s")}}


def row(r: dict[str, Any], folder: Path | None = None) -> tuple[tuple[Any, ...], list[str]]:
    """(sort key, cells) of one result; ``folder`` holds its requests.parquet (results before
    ``serving.cycle_intervals``)."""
    s = r.get("serving") or {}
    c = r.get("cycles") or {}
    server = r.get("scenario") == "server"
    steady = [w for w in s.get("steady") or [] if w.get("energy_per_output_token_j") is not None]
    steady_j = sum(w["energy_per_output_token_j"] for w in steady) / len(steady) if steady else None
    occupancy = [w["occupancy"] for w in s.get("steady") or [] if w.get("occupancy") is not None]
    per_request = s.get("net_per_request_j")  # net energy / completed requests (a number)
    if isinstance(per_request, dict):  # some early results held a summary here
        per_request = per_request.get("mean")
    lat = _latency(r)
    ci, recomputed = cycle_intervals(r, folder)
    net_request = (ci or {}).get("net_per_request_j")
    conc = s.get("concurrency") if server else r["config"]["batch_size"]
    model = Path(str(r["model"])).name
    kind = "continuous " if r["config"].get("batching") == "continuous" else "b"
    way = f"server ({s.get('engine')})" if server else f"in-process {kind}{conc}"
    cells = [
        model, way, str(conc if server else "-"), str(c.get("n", 1)),
        _interval(c.get("energy_per_output_token_j_ci95")),
        _interval(c.get("net_energy_per_output_token_j_ci95")),
        _interval(net_request) if net_request else _g(per_request), _g(steady_j),
        _ms(lat.get("ttft_s"), "ttft", ci), _ms(lat.get("itl_s"), "itl", ci) + (" *" if recomputed else ""),
        _interval(c.get("output_tokens_per_s_ci95"), 4),
        f"{100 * sum(occupancy) / len(occupancy):.0f} %" if occupancy else "-",
    ]  # fmt: skip
    return (model, not server, conc or 0), cells


def main(folders: list[str]) -> None:
    paths = [p for f in folders for p in sorted(Path(f).glob("**/result.json"))]
    rows = [row(json.loads(p.read_text()), p.parent) for p in paths]
    print("| " + " | ".join(HEADERS) + " |")
    print("|" + "---|" * len(HEADERS))
    for _, cells in sorted(rows, key=lambda kv: kv[0]):
        print("| " + " | ".join(cells) + " |")
    print()
    print(NOTE)


if __name__ == "__main__":
    main(sys.argv[1:])
