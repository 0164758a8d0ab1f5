"""The server scenario's MLflow names: the same metric names as an in-process run where the meaning is the
same (``latency/ttft_p50_s``, ``latency/itl_p50_s``...), new ones for what only a server has (end-to-end
latency, requests and errors, J per request, the steady-state window), the 95 % intervals across cycles
of the per-cycle percentiles and net J/request (``<metric>_ci95_low`` / ``_ci95_high``, as the headline
intervals of ``naming``), and the scenario's tags.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import fmean

from llem_mlflow.figures.serving import Spread
from llem_mlflow.figures.serving_cycles import ServingIntervals
from llem_mlflow.figures.stats import Interval
from llem_mlflow.results import rounding
from llem_mlflow.results.serving import ServingFigures


def _latency(name: str, s: Spread | None) -> dict[str, rounding.Rounded]:
    """``latency/<name>_p50_s`` ... ``_mean_s``."""
    if s is None:
        return {}
    return {
        f"latency/{name}_{q}_s": (value, rounding.seconds)
        for q, value in (("p50", s.p50), ("p90", s.p90), ("p99", s.p99), ("mean", s.mean))
    }


def serving_metrics(f: ServingFigures) -> dict[str, rounding.Rounded]:
    """Latency percentiles, request counts and error rate, J per request, the steady-state window."""
    lat = f.latency
    out: dict[str, rounding.Rounded] = {
        **_latency("ttft", lat.ttft_s),
        **_latency("itl", lat.itl_s),
        **_latency("e2e", lat.e2e_s),
        "serving/requests": (f.requests, rounding.count),
        "serving/completed": (f.completed, rounding.count),
        "serving/failed": (f.failed, rounding.count),
        "serving/without_usage": (f.without_usage, rounding.count),
        "serving/error_rate": (f.error_rate, rounding.ratio),
        "serving/delayed_sends": (f.delayed_sends, rounding.count),
        "energy/net_per_request_j": (f.net_per_request_j, rounding.ratio),
    }
    per = f.per_request.per_request_j if f.per_request else None
    if per is not None:
        out |= {
            f"energy/per_request_net_j_{q}": (value, rounding.ratio)
            for q, value in (("p50", per.p50), ("p90", per.p90), ("p99", per.p99), ("mean", per.mean))
        }
    out |= _steady_metrics(f)
    out |= _interval_metrics(f.cycle_intervals)
    return out


def _interval_metrics(ci: ServingIntervals | None) -> dict[str, rounding.Rounded]:
    """``latency/ttft_p50_s_ci95_low`` ... ``energy/net_per_request_j_ci95_high``, where bounds exist."""
    if ci is None:
        return {}
    pairs: dict[str, tuple[Interval | None, Callable[[float], float]]] = {
        "latency/ttft_p50_s": (ci.ttft_p50_s, rounding.seconds),
        "latency/ttft_p99_s": (ci.ttft_p99_s, rounding.seconds),
        "latency/itl_p50_s": (ci.itl_p50_s, rounding.seconds),
        "latency/itl_p99_s": (ci.itl_p99_s, rounding.seconds),
        "latency/e2e_p50_s": (ci.e2e_p50_s, rounding.seconds),
        "energy/net_per_request_j": (ci.net_per_request_j, rounding.ratio),
    }
    return rounding.ci95_bounds(pairs)


def _steady_metrics(f: ServingFigures) -> dict[str, rounding.Rounded]:
    """Means over the cycles whose steady-state window exists (closed loop, target reached)."""
    windows = f.steady
    if not windows:
        return {}

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return fmean(known) if len(known) == len(values) else None

    return {
        "steady/window_s": (mean([w.duration_s for w in windows]), rounding.seconds),
        "steady/occupancy": (mean([w.occupancy for w in windows]), rounding.ratio),
        "steady/output_tokens_per_s": (mean([w.output_tokens_per_s for w in windows]), rounding.ratio),
        "steady/energy_per_output_token_j": (
            mean([w.energy_per_output_token_j for w in windows]),
            rounding.ratio,
        ),
        "steady/net_energy_per_output_token_j": (
            mean([w.net_energy_per_output_token_j for w in windows]),
            rounding.ratio,
        ),
    }


def serving_tags(scenario: str, f: ServingFigures | None) -> dict[str, str | None]:
    """``llem.scenario`` always; the engine, its version, the load and the server's URL for a server."""
    if f is None:
        return {"llem.scenario": scenario}
    load = f"closed, concurrency {f.concurrency}" if f.load == "closed" else f"open, {f.request_rate:g} req/s"
    return {
        "llem.scenario": scenario,
        "llem.engine": f.engine,
        "llem.engine_version": f.engine_version,
        "llem.server.url": f.url[:500],
        "llem.server.launched": str(f.launched).lower(),
        "llem.load": load,
        "llem.api": f.api,
    }
