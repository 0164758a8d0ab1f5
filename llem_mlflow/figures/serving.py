"""Figures of the server scenario: token timing, windows, request latency, per-request energy.

Pure functions of ``RequestRecord`` lists (one cycle's records, as the client saw them) and of energy
figures; no I/O, no threads. Warm-up records (``warmup=True``) take part in nothing here: no window, no
in-flight count, no latency, and ``apportion`` gives them 0 J.

**Tokens in time** (``token_times``). Only the server's ``usage`` counts tokens; chunks are not tokens (a
server may pack several in one). A request's ``n = output_tokens`` tokens are placed: the first at
``first_token_s``; the other ``n - 1`` evenly over (first, last], where last = the last chunk's arrival
(``end_s`` when no chunk was recorded): the k-th at ``first + k * (last - first) / (n - 1)``, k = 1..n-1,
the (n-1)-th exactly at ``last``. An errored request, one without usage or without a first token has no
token times. ``tokens_between(r, a, b)`` counts them in [a, b) (half-open: a token on an edge belongs to
the interval that starts there), or in [a, b] with ``include_end``.

**Windows.** The whole window runs from the first send to the last end. The steady window (closed loop
at ``target`` = concurrency) starts when the in-flight count (sent, not yet ended; events at the same
instant are netted) first reaches ``target``, and ends at the first completion after the last send (the
drain has begun); None when the count never reaches ``target``, the end is not after the start, or the
loop is open (``target`` None: only the whole window is reported). ``occupancy`` is the time-averaged
in-flight count over a window divided by ``target``.

**Latency** (``request_latency``), over the measured requests that completed with usage: TTFT = first
token - sent; E2E = end - sent; ITL of a request = (last chunk - first token) / (output_tokens - 1) for
output_tokens >= 2 (a per-request mean from usage, since chunks are not tokens); percentiles are over
requests, by ``latency.percentile`` (linear interpolation between closest ranks).

**Per-request energy** (``apportion``). The window is cut at ``edges`` into intervals [e_i, e_i+1) (the
last one closed, so a token at the window's end counts); ``interval_j`` is each interval's net energy
(above idle; ``net_interval_energy`` gives a trace's shape, ``scale_to_total`` scales it to the
counter's net total, which stays the truth for the sum). In each interval the energy goes to requests by
their share of the tokens produced in it. An interval where no token is produced but requests are in
flight (overlap of positive length with [sent, end)) is shared equally among them: this is the only way
errored requests and requests without usage are charged (they occupied the server). An interval with
nothing in flight is spread over the measured requests by their tokens in the whole window (equally when
none produced any). Every joule of ``interval_j`` is charged: the results sum to ``sum(interval_j)`` to
float rounding (``math.fsum``).

What the per-request rule assumes: a request's tokens are spread evenly between its first and its last
chunk (the server's usage gives their number, not their times); within each short interval (~100 ms)
the GPU's energy above idle is proportional to the tokens produced in it, whoever produced them; so the
prefill energy of a request lands on the tokens that OTHER requests produced during its prefill when
batching mixes them, i.e. the rule charges by decode share, which is what a continuous-batching server
does at the step level (one forward pass serves every running request). An interval in which requests
are in flight but none produces a token (all in prefill or queued) is split equally among them. Idle
power is subtracted before apportioning: idle energy belongs to no request.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import pairwise

from pydantic import BaseModel, ConfigDict

from llem_mlflow.figures.latency import percentile
from llem_mlflow.served import RequestRecord


class Spread(BaseModel):
    """Percentiles and mean of one quantity over ``n`` requests (linear-interpolation percentiles)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int
    p50: float
    p90: float
    p99: float
    mean: float


class ServingLatency(BaseModel):
    """Request latency in seconds over ``requests`` (measured, completed, with usage); a field is None
    when no request qualifies for it (ITL needs output_tokens >= 2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests: int
    ttft_s: Spread | None
    itl_s: Spread | None
    e2e_s: Spread | None
    output_tokens_per_s: Spread | None  # per request: output_tokens / e2e_s


class ApportionSummary(BaseModel):
    """Per-request joules: their spread over the completed measured requests, and where the rest went."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_request_j: Spread | None  # over measured requests that completed (ok); None when none did
    total_j: float  # sum over all records (= the apportioned energy)
    failed_j: float  # charged to measured requests that did not complete (in-flight rule only)


def spread(values: Sequence[float]) -> Spread | None:
    """p50/p90/p99/mean of ``values``; None when there are none."""
    if not values:
        return None
    return Spread(
        n=len(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
        mean=math.fsum(values) / len(values),
    )


def _measured(records: Sequence[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if not r.warmup]


def _last_token_s(r: RequestRecord, first: float) -> float:
    """The last chunk's arrival (``end_s`` without chunks), never before ``first``."""
    return max(r.chunk_s[-1] if r.chunk_s else r.end_s, first)


def token_times(r: RequestRecord) -> list[float]:
    """Times of ``r``'s usage tokens (see the module docstring); [] when it errored or has no usage."""
    n, first = r.output_tokens, r.first_token_s
    if not r.ok or n is None or n < 1 or first is None:
        return []
    last = _last_token_s(r, first)
    step = (last - first) / (n - 1) if n > 1 else 0.0
    return [first + k * step for k in range(n - 1)] + ([last] if n > 1 else [first])


def tokens_between(r: RequestRecord, a: float, b: float, *, include_end: bool = False) -> float:
    """How many of ``r``'s tokens fall in [a, b) ([a, b] with ``include_end``); exact, no interpolation."""
    times = token_times(r)
    end = bisect_right(times, b) if include_end else bisect_left(times, b)
    return float(max(0, end - bisect_left(times, a)))


def in_flight_series(records: Sequence[RequestRecord]) -> list[tuple[float, int]]:
    """The in-flight count as a step function: (time, count from then until the next point).

    +1 at each measured request's ``sent_s``, -1 at its ``end_s``; events at one instant are netted, so
    a request that ends as another is sent leaves the count unchanged. [] when there is no request.
    """
    deltas: dict[float, int] = {}
    for r in _measured(records):
        deltas[r.sent_s] = deltas.get(r.sent_s, 0) + 1
        deltas[r.end_s] = deltas.get(r.end_s, 0) - 1
    series, count = [], 0
    for t in sorted(deltas):
        count += deltas[t]
        series.append((t, count))
    return series


def whole_window(records: Sequence[RequestRecord]) -> tuple[float, float]:
    """First ``sent_s`` to last ``end_s`` of the measured records; ValueError when there are none."""
    measured = _measured(records)
    if not measured:
        raise ValueError("no measured request: the whole window needs at least one non-warm-up record")
    return min(r.sent_s for r in measured), max(r.end_s for r in measured)


def steady_window(records: Sequence[RequestRecord], target: int | None) -> tuple[float, float] | None:
    """Closed-loop steady state: first reach of ``target`` in flight to the drain's first completion.

    None for the open loop (``target`` None), when the count never reaches ``target``, or when the end
    is not after the start.
    """
    if target is None:
        return None
    if target < 1:
        raise ValueError(f"steady_window target (concurrency) must be >= 1, not {target}")
    measured = _measured(records)
    start = next((t for t, count in in_flight_series(measured) if count >= target), None)
    if start is None:
        return None
    last_sent = max(r.sent_s for r in measured)
    end = min((r.end_s for r in measured if r.end_s > last_sent), default=None)
    if end is None or end <= start:
        return None
    return start, end


def occupancy(records: Sequence[RequestRecord], start: float, end: float, target: int) -> float:
    """Time-averaged in-flight count over [start, end] divided by ``target`` (1.0: every slot busy)."""
    if not end > start:
        raise ValueError(f"occupancy needs end > start, got [{start}, {end}]")
    if target < 1:
        raise ValueError(f"occupancy target must be >= 1, not {target}")
    series = in_flight_series(records)
    area = []
    for i, (t, count) in enumerate(series):
        t_next = series[i + 1][0] if i + 1 < len(series) else end
        lo, hi = max(t, start), min(t_next, end)
        if hi > lo:
            area.append(count * (hi - lo))
    return math.fsum(area) / (end - start) / target


def request_latency(records: Sequence[RequestRecord]) -> ServingLatency:
    """TTFT, ITL, E2E and output tokens/s over the measured requests that completed with usage."""
    done = [r for r in _measured(records) if r.ok and r.output_tokens is not None]
    ttft = [r.ttft_s for r in done if r.ttft_s is not None]
    itl = [
        (_last_token_s(r, r.first_token_s) - r.first_token_s) / (r.output_tokens - 1)
        for r in done
        if r.first_token_s is not None and r.output_tokens is not None and r.output_tokens >= 2
    ]
    rates = [r.output_tokens / r.e2e_s for r in done if r.output_tokens is not None and r.e2e_s > 0]
    return ServingLatency(
        requests=len(done),
        ttft_s=spread(ttft),
        itl_s=spread(itl),
        e2e_s=spread([r.e2e_s for r in done]),
        output_tokens_per_s=spread(rates),
    )


def net_interval_energy(
    times_s: Sequence[float], power_w: Sequence[float], idle_w: float, edges: Sequence[float]
) -> list[float]:
    """Integral of (power - idle) over each interval [edges[i], edges[i+1]], in J.

    Trapezoid: power is linear between samples (times ascending) and held at the first / last sample
    outside them, the same rule as ``PowerTrace.integrate_j``; unlike it, samples just outside an
    interval shape its edges, so the intervals add up to the integral over [edges[0], edges[-1]]. The
    result may be negative where power is below idle (``scale_to_total`` clips it).
    """
    if len(times_s) != len(power_w) or not times_s:
        raise ValueError("net_interval_energy needs as many power samples as times, and at least one")
    _check_edges(edges)
    if any(b < a for a, b in pairwise(times_s)):
        raise ValueError("net_interval_energy needs sample times in ascending order")

    def power_at(t: float) -> float:
        i = bisect_right(times_s, t)
        if i == 0:
            return power_w[0]
        if i == len(times_s):
            return power_w[-1]
        t0, t1 = times_s[i - 1], times_s[i]
        if t1 == t0:
            return power_w[i]
        return power_w[i - 1] + (t - t0) * (power_w[i] - power_w[i - 1]) / (t1 - t0)

    out = []
    for a, b in pairwise(edges):
        inside = times_s[bisect_right(times_s, a) : bisect_left(times_s, b)]
        points = [a, *inside, b]
        values = [power_at(t) for t in points]
        pairs = zip(pairwise(points), pairwise(values), strict=True)
        parts = [(t1 - t0) * (p0 + p1) / 2 for (t0, t1), (p0, p1) in pairs]
        out.append(math.fsum(parts) - idle_w * (b - a))
    return out


def scale_to_total(weights_j: Sequence[float], total_j: float) -> list[float]:
    """``weights_j`` (a trace's shape) scaled to sum to ``total_j`` (the counter's net energy).

    Negative weights (power below idle) are clipped to 0 first; all weights zero: an equal split.
    """
    if not weights_j:
        raise ValueError("scale_to_total needs at least one weight")
    if not all(math.isfinite(w) for w in (*weights_j, total_j)):
        raise ValueError("scale_to_total needs finite weights and total")
    clipped = [max(0.0, w) for w in weights_j]
    weight = math.fsum(clipped)
    if weight == 0:
        return [total_j / len(clipped)] * len(clipped)
    return [total_j * w / weight for w in clipped]


def _check_edges(edges: Sequence[float]) -> None:
    if len(edges) < 2 or any(not b > a for a, b in pairwise(edges)):
        raise ValueError("edges must hold at least two times, strictly increasing")


def _interval_of(edges: Sequence[float], t: float) -> int | None:
    """Index of the interval holding ``t`` ([e_i, e_i+1), the last closed); None outside the window."""
    if t == edges[-1]:
        return len(edges) - 2
    i = bisect_right(edges, t) - 1
    return i if 0 <= i < len(edges) - 1 else None


def _tokens_per_interval(records: Sequence[RequestRecord], edges: Sequence[float]) -> list[dict[int, int]]:
    """For each interval: record position -> tokens it produced there (measured records only)."""
    per: list[dict[int, int]] = [{} for _ in edges[1:]]
    for pos, r in enumerate(records):
        if r.warmup:
            continue
        for t in token_times(r):
            i = _interval_of(edges, t)
            if i is not None:
                per[i][pos] = per[i].get(pos, 0) + 1
    return per


def _in_flight_per_interval(
    records: Sequence[RequestRecord], edges: Sequence[float], wanted: set[int]
) -> dict[int, list[int]]:
    """For each interval index in ``wanted``: positions of the measured records in flight there."""
    flying: dict[int, list[int]] = {i: [] for i in wanted}
    last = len(edges) - 2
    for pos, r in enumerate(records):
        if r.warmup or not r.end_s > r.sent_s:
            continue
        i0 = max(0, bisect_right(edges, r.sent_s) - 1)
        i1 = min(last, bisect_left(edges, r.end_s) - 1)
        for i in range(i0, i1 + 1):
            if i in flying:
                flying[i].append(pos)
    return flying


def apportion(
    records: Sequence[RequestRecord],
    edges: Sequence[float],
    interval_j: Sequence[float],
    window: tuple[float, float],
) -> list[float]:
    """Joules per record (same order) from each interval's net energy (see the module docstring).

    ``edges`` (n + 1 times, strictly increasing, from ``window[0]`` to ``window[1]``) cut the window into
    the n intervals of ``interval_j``. The result sums to ``sum(interval_j)`` to float rounding; warm-up
    records get 0. [] when there is no measured record: the caller reports the energy unapportioned.
    """
    _check_edges(edges)
    if len(interval_j) != len(edges) - 1:
        raise ValueError(f"{len(edges)} edges make {len(edges) - 1} intervals, not {len(interval_j)}")
    if (edges[0], edges[-1]) != (window[0], window[1]):
        raise ValueError(f"edges must run from window[0] to window[1] {window}, not {edges[0]}..{edges[-1]}")
    measured = [pos for pos, r in enumerate(records) if not r.warmup]
    if not measured:
        return []
    tokens = _tokens_per_interval(records, edges)
    idle = {i for i, produced in enumerate(tokens) if not produced}
    flying = _in_flight_per_interval(records, edges, idle)
    whole: dict[int, int] = {}
    for produced in tokens:
        for pos, k in produced.items():
            whole[pos] = whole.get(pos, 0) + k
    fallback = whole or dict.fromkeys(measured, 1)
    parts: list[list[float]] = [[] for _ in records]
    for i, energy in enumerate(interval_j):
        shares = tokens[i] or dict.fromkeys(flying.get(i, ()), 1) or fallback
        weight = sum(shares.values())
        for pos, k in shares.items():
            parts[pos].append(energy * k / weight)
    return [math.fsum(p) for p in parts]


def apportion_summary(joules: Sequence[float], records: Sequence[RequestRecord]) -> ApportionSummary:
    """J per request (p50/p90/p99/mean) over measured completed requests, the total, the failed share."""
    if len(joules) != len(records):
        raise ValueError(f"{len(joules)} joule values for {len(records)} records")
    pairs = [(j, r) for j, r in zip(joules, records, strict=True) if not r.warmup]
    return ApportionSummary(
        per_request_j=spread([j for j, r in pairs if r.ok]),
        total_j=math.fsum(joules),
        failed_j=math.fsum(j for j, r in pairs if not r.ok),
    )
