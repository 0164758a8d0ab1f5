"""The server scenario's figures per cycle and their 95 % intervals across cycles
(``ServingFigures.cycle_intervals``).

Per cycle, from that cycle's records alone, by the rules of ``serving.request_latency`` (measured requests
that completed with usage; ITL per request from its last chunk, ``end_s`` without chunks): TTFT p50 and
p99, ITL p50 and p99, E2E p50, in seconds; and net J per request = the cycle's net energy / its completed
measured requests. Each series is summarised by ``stats.summarize_known``: the latencies are positive
(log-scale bounds), net J/request is linear (net energy can be below 0). A cycle where a figure is
unknown (no request qualifies, net energy unknown, no request completed) is left out of that figure
(``Interval.left_out``); a figure unknown in every cycle has no interval (None). Fewer than 2 cycles:
nothing to say across cycles (``serving_intervals`` gives None); bounds from ``stats.MIN_INTERVAL_N``
cycles. The caller chooses the cycles (the run leaves out a cycle cut short, as ``CycleStats`` does).

The all-requests percentiles (``ServingLatency``) pool every cycle's requests; an interval's ``mean`` is
the mean of the per-cycle percentiles, which is not the pooled percentile (p99 above all).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from llem_mlflow.figures import stats
from llem_mlflow.figures.serving import Spread, request_latency
from llem_mlflow.figures.stats import Interval
from llem_mlflow.served import RequestRecord

#: The per-cycle figures, in ``ServingIntervals``' field order; all but the last are latencies (s).
FIGURES = ("ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "e2e_p50_s", "net_per_request_j")


class ServingIntervals(BaseModel):
    """One figure per cycle, summarised across cycles (``stats.Interval``); None: unknown in every cycle."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttft_p50_s: Interval | None = None
    ttft_p99_s: Interval | None = None
    itl_p50_s: Interval | None = None
    itl_p99_s: Interval | None = None
    e2e_p50_s: Interval | None = None
    net_per_request_j: Interval | None = None  # linear: net energy can be below 0


def _q(s: Spread | None, q: str) -> float | None:
    return None if s is None else float(getattr(s, q))


def cycle_figures(records: Sequence[RequestRecord], net_j: float | None) -> dict[str, float | None]:
    """One cycle's figures (keys ``FIGURES``); None where unknown."""
    lat = request_latency(records)
    completed = sum(1 for r in records if not r.warmup and r.ok)
    return {
        "ttft_p50_s": _q(lat.ttft_s, "p50"),
        "ttft_p99_s": _q(lat.ttft_s, "p99"),
        "itl_p50_s": _q(lat.itl_s, "p50"),
        "itl_p99_s": _q(lat.itl_s, "p99"),
        "e2e_p50_s": _q(lat.e2e_s, "p50"),
        "net_per_request_j": net_j / completed if net_j is not None and completed else None,
    }


def serving_intervals(
    cycles: Sequence[Sequence[RequestRecord]], net_j: Sequence[float | None]
) -> ServingIntervals | None:
    """Each figure of ``cycle_figures`` over ``cycles`` (each cycle's records, with its net energy in
    ``net_j``); None with fewer than 2 cycles. ``ValueError`` when the two lengths differ."""
    if len(cycles) != len(net_j):
        raise ValueError(f"{len(cycles)} cycles of records but {len(net_j)} net energies")
    if len(cycles) < 2:
        return None
    per = [cycle_figures(records, net) for records, net in zip(cycles, net_j, strict=True)]
    return ServingIntervals(
        **{
            name: stats.summarize_known([p[name] for p in per], positive=name != "net_per_request_j")
            for name in FIGURES
        }
    )
