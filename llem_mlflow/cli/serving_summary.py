"""The CLI's lines for a server-scenario run: the server and load, the requests' outcome, latency
percentiles, J per request and the steady-state window (``summary`` adds them after the energy lines)."""

from __future__ import annotations

from typing import Any

from llem_mlflow.cli.console import line


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def serving_lines(r: Any) -> list[str]:
    """Nothing for an in-process result."""
    s = r.serving
    if s is None:
        return []
    load = f"closed loop, {s.concurrency} in flight"
    if s.load == "open":
        load = f"open loop, {s.request_rate:g} req/s"
    version = f" {s.engine_version}" if s.engine_version else ""
    how = "launched" if s.launched else "attached"
    lines = [
        line("server", f"{s.engine}{version} at {s.url} ({how}), {s.api} API, {load}"),
        line("requests", _requests(s)),
    ]
    lat = s.latency
    parts = [
        f"{name} p50 {_ms(spread.p50)} p99 {_ms(spread.p99)}"
        for name, spread in (("TTFT", lat.ttft_s), ("ITL", lat.itl_s), ("E2E", lat.e2e_s))
        if spread is not None
    ]
    if parts:
        lines.append(line("latency", "; ".join(parts)))
    per = s.per_request.per_request_j if s.per_request else None
    if per is not None:
        lines.append(line("J/request", f"net p50 {per.p50:.4g} J, p99 {per.p99:.4g} J (sum = net total)"))
    lines.extend(_steady(s))
    return lines


def _requests(s: Any) -> str:
    text = f"{s.completed:,} of {s.requests:,} completed"
    if s.failed:
        kinds = ", ".join(f"{k} x{n}" for k, n in s.errors.items())
        text += f"; {s.failed:,} failed ({s.error_rate:.1%}: {kinds})"
    if s.without_usage:
        text += f"; {s.without_usage:,} without usage (not counted)"
    return text


def _steady(s: Any) -> list[str]:
    if not s.steady:
        return []
    w = s.steady[0]
    more = f" (cycle 1 of {len(s.steady)})" if len(s.steady) > 1 else ""
    energy = f", {w.energy_per_output_token_j:.4g} J/token" if w.energy_per_output_token_j is not None else ""
    text = f"{w.duration_s:.2f} s{more}, occupancy {w.occupancy:.0%}, {w.output_tokens_per_s:,.1f} tok/s"
    return [line("steady state", text + energy)]
