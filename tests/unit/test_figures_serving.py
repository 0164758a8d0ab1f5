"""Server-scenario figures (llem_mlflow/figures/serving.py): values computed by hand in the comments.

The main timeline (closed loop, concurrency 2, on a 1 s grid):

    A  sent 0, first token 1, chunks 1 2 3, end 3, usage 5 tokens -> tokens at 1, 1.5, 2, 2.5, 3
    B  sent 0, first token 2, chunks 2 4,   end 4, usage 3 tokens -> tokens at 2, 3, 4
    C  sent 3, first token 5, chunks 5 5.5, end 7, usage 2 tokens -> tokens at 5, 5.5

(A: the 4 tokens after the first spread over (1, 3]: step (3 - 1) / 4 = 0.5; B: step (4 - 2) / 2 = 1;
C: step (5.5 - 5) / 1 = 0.5.) C is sent at 3 as A ends (the loop refills the slot).
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llem_mlflow.figures.serving import (
    apportion,
    apportion_summary,
    in_flight_series,
    net_interval_energy,
    occupancy,
    request_latency,
    scale_to_total,
    steady_window,
    token_times,
    tokens_between,
    whole_window,
)
from llem_mlflow.served import RequestRecord

A = RequestRecord(0, sent_s=0.0, end_s=3.0, first_token_s=1.0, chunk_s=(1.0, 2.0, 3.0), output_tokens=5)
B = RequestRecord(1, sent_s=0.0, end_s=4.0, first_token_s=2.0, chunk_s=(2.0, 4.0), output_tokens=3)
C = RequestRecord(2, sent_s=3.0, end_s=7.0, first_token_s=5.0, chunk_s=(5.0, 5.5), output_tokens=2)
TIMELINE = [A, B, C]
#: Apportioned over (0, 8): eight 1 s intervals, the last [7, 8] with nothing in flight.
EDGES = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
INTERVAL_J = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]  # sum 360


def test_token_times_spread_usage_tokens_from_first_token_to_last_chunk() -> None:
    assert token_times(A) == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert token_times(B) == [2.0, 3.0, 4.0]
    assert token_times(C) == [5.0, 5.5]
    one = RequestRecord(0, sent_s=0.0, end_s=2.0, first_token_s=0.5, chunk_s=(0.5,), output_tokens=1)
    assert token_times(one) == [0.5]
    # no chunk recorded: the last token is placed at end_s; 3 tokens over (1, 2]: step 0.5
    no_chunks = RequestRecord(0, sent_s=0.0, end_s=2.0, first_token_s=1.0, output_tokens=3)
    assert token_times(no_chunks) == [1.0, 1.5, 2.0]
    # the last of 7 tokens lands exactly on the last chunk (no float drift): 0.1 + 6 x (0.7 - 0.1) / 6
    odd = RequestRecord(0, sent_s=0.0, end_s=1.0, first_token_s=0.1, chunk_s=(0.1, 0.7), output_tokens=7)
    assert token_times(odd)[-1] == 0.7 and len(token_times(odd)) == 7


def test_requests_without_usage_or_with_an_error_have_no_token_times() -> None:
    no_usage = RequestRecord(0, sent_s=0.0, end_s=2.0, first_token_s=0.5, chunk_s=(0.5, 1.0))
    errored = RequestRecord(
        0,
        sent_s=0.0,
        end_s=2.0,
        first_token_s=0.5,
        chunk_s=(0.5,),
        output_tokens=4,
        error="timeout after 2 s",
    )
    zero = RequestRecord(0, sent_s=0.0, end_s=2.0, output_tokens=0)
    assert token_times(no_usage) == token_times(errored) == token_times(zero) == []
    assert tokens_between(errored, 0.0, 10.0) == 0.0


def test_tokens_between_counts_half_open_intervals() -> None:
    assert tokens_between(A, 1.0, 2.0) == 2.0  # 1.0 and 1.5; 2.0 belongs to [2, 3)
    assert tokens_between(A, 2.0, 3.0) == 2.0  # 2.0, 2.5
    assert tokens_between(A, 3.0, 4.0) == 1.0  # 3.0
    assert tokens_between(A, 0.0, 3.0) == 4.0  # the token at 3.0 is out of [0, 3) ...
    assert tokens_between(A, 0.0, 3.0, include_end=True) == 5.0  # ... and in [0, 3]
    assert tokens_between(A, 1.2, 1.4) == 0.0
    assert tokens_between(B, 0.0, 2.0) == 0.0


def test_in_flight_series_steady_window_and_occupancy_of_the_timeline() -> None:
    # 0: A and B sent -> 2; 3: A ends and C is sent -> still 2; 4: B ends -> 1; 7: C ends -> 0
    assert in_flight_series(TIMELINE) == [(0.0, 2), (3.0, 2), (4.0, 1), (7.0, 0)]
    assert whole_window(TIMELINE) == (0.0, 7.0)
    # start: 2 in flight first at 0; last send at 3 (C); ends after 3: B at 4, C at 7 -> end 4.
    # (A's end at 3 is not after the last send.)
    assert steady_window(TIMELINE, 2) == (0.0, 4.0)
    # over [0, 4]: 2 in flight for 4 s -> 2 x 4 / 4 / 2 = 1.0
    assert occupancy(TIMELINE, 0.0, 4.0, 2) == pytest.approx(1.0)
    # over [0, 7]: 2 x 4 s + 1 x 3 s = 11 -> 11 / 7 / 2
    assert occupancy(TIMELINE, 0.0, 7.0, 2) == pytest.approx(11 / 14)
    # over [3.5, 5]: 2 x 0.5 + 1 x 1 = 2 -> 2 / 1.5 / 2
    assert occupancy(TIMELINE, 3.5, 5.0, 2) == pytest.approx(2 / 3)


def test_steady_window_is_none_for_the_open_loop_or_a_target_never_reached() -> None:
    assert steady_window(TIMELINE, None) is None
    assert steady_window(TIMELINE, 3) is None  # never 3 in flight
    assert steady_window([], 1) is None
    # target 1: first in flight at 0; last send 3; first end after 3 is B's at 4
    assert steady_window(TIMELINE, 1) == (0.0, 4.0)
    with pytest.raises(ValueError):
        steady_window(TIMELINE, 0)


def test_warmup_records_are_left_out_of_windows_and_series() -> None:
    warm = RequestRecord(0, sent_s=-5.0, end_s=-1.0, first_token_s=-4.0, output_tokens=3, warmup=True)
    assert whole_window([warm, *TIMELINE]) == (0.0, 7.0)
    assert in_flight_series([warm, *TIMELINE]) == in_flight_series(TIMELINE)
    assert request_latency([warm]).requests == 0
    with pytest.raises(ValueError):
        whole_window([warm])


def test_apportion_the_timeline_by_tokens_in_flight_and_the_whole_window() -> None:
    # [0,1) 10 J: no token; A and B in flight -> 5 each
    # [1,2) 20 J: A 2 tokens (1, 1.5) -> A 20
    # [2,3) 30 J: A 2 (2, 2.5), B 1 (2) -> A 20, B 10
    # [3,4) 40 J: A 1 (3), B 1 (3); C in flight, in prefill -> A 20, B 20, C 0
    # [4,5) 50 J: B 1 (4) -> B 50
    # [5,6) 60 J: C 2 (5, 5.5) -> C 60
    # [6,7) 70 J: no token; C in flight -> C 70
    # [7,8] 80 J: nothing in flight -> by tokens in the window A 5, B 3, C 2 of 10 -> 40, 24, 16
    # A = 5 + 20 + 20 + 20 + 40 = 105; B = 5 + 10 + 20 + 50 + 24 = 109; C = 60 + 70 + 16 = 146
    joules = apportion(TIMELINE, EDGES, INTERVAL_J, (0.0, 8.0))
    assert joules == pytest.approx([105.0, 109.0, 146.0])
    assert math.fsum(joules) == pytest.approx(360.0)


def test_errored_and_usage_less_requests_are_charged_only_where_in_flight_without_tokens() -> None:
    errored = RequestRecord(
        3, sent_s=0.0, end_s=1.0, first_token_s=0.5, chunk_s=(0.5,), output_tokens=4, error="HTTP 500: boom"
    )
    no_usage = RequestRecord(4, sent_s=6.0, end_s=6.9, first_token_s=6.2, chunk_s=(6.2, 6.8))
    warm = RequestRecord(5, sent_s=0.0, end_s=8.0, first_token_s=0.1, output_tokens=50, warmup=True)
    records = [A, B, C, errored, no_usage, warm]
    # [0,1) 10 J: no token (the errored request's are not counted); A, B, errored in flight -> 10/3 each
    # [6,7) 70 J: no token; C and no_usage in flight -> 35 each
    # [7,8] 80 J: nothing in flight -> A 40, B 24, C 16 (the errored and usage-less have no tokens)
    # the warm-up record takes part in nothing: 0 J, and its 50 tokens count nowhere
    # A = 10/3 + 60 + 40; B = 10/3 + 80 + 24; C = 60 + 35 + 16; errored = 10/3; no_usage = 35
    joules = apportion(records, EDGES, INTERVAL_J, (0.0, 8.0))
    third = 10 / 3
    assert joules == pytest.approx([third + 100, third + 104, 111.0, third, 35.0, 0.0])
    assert math.fsum(joules) == pytest.approx(360.0)
    summary = apportion_summary(joules, records)
    assert summary.total_j == pytest.approx(360.0)
    assert summary.failed_j == pytest.approx(third)
    assert summary.per_request_j is not None and summary.per_request_j.n == 4  # A, B, C, no_usage (ok)
    # sorted [35, 103.33, 107.33, 111]: p50 h = 1.5 -> 105.33; mean (35 + 103.33 + 107.33 + 111) / 4
    assert summary.per_request_j.p50 == pytest.approx(105.0 + 1 / 3)
    assert summary.per_request_j.mean == pytest.approx((360.0 - third) / 4)


def test_a_token_at_the_window_end_counts_in_the_last_interval() -> None:
    f = RequestRecord(0, sent_s=0.0, end_s=2.0, first_token_s=1.0, chunk_s=(1.0, 2.0), output_tokens=2)
    g = RequestRecord(1, sent_s=0.0, end_s=2.0, first_token_s=1.5, chunk_s=(1.5,), output_tokens=1)
    # [0,1) 4 J: no token, both in flight -> 2, 2
    # [1,2] 6 J (closed: F's token at 2.0 counts): F 2 tokens (1, 2), G 1 (1.5) -> 4, 2
    assert apportion([f, g], [0.0, 1.0, 2.0], [4.0, 6.0], (0.0, 2.0)) == pytest.approx([6.0, 4.0])


def test_with_no_token_anywhere_an_empty_interval_is_split_equally() -> None:
    one = RequestRecord(0, sent_s=0.0, end_s=1.0, error="connection refused")
    two = RequestRecord(1, sent_s=0.0, end_s=2.0, error="timeout after 2 s")
    # [0,1) 6 J: both in flight -> 3, 3; [1,2) 4 J: two -> 4; [2,3] 8 J: nothing in flight, no token
    # anywhere -> equal 4, 4
    assert apportion([one, two], [0.0, 1.0, 2.0, 3.0], [6.0, 4.0, 8.0], (0.0, 3.0)) == pytest.approx(
        [7.0, 11.0]
    )


def test_apportion_of_no_records_and_bad_edges() -> None:
    assert apportion([], [0.0, 1.0], [5.0], (0.0, 1.0)) == []
    warm = RequestRecord(0, sent_s=0.0, end_s=1.0, warmup=True)
    assert apportion([warm], [0.0, 1.0], [5.0], (0.0, 1.0)) == []
    with pytest.raises(ValueError, match="intervals"):
        apportion(TIMELINE, [0.0, 1.0, 2.0], [5.0], (0.0, 2.0))
    with pytest.raises(ValueError, match="window"):
        apportion(TIMELINE, [0.0, 1.0], [5.0], (0.0, 2.0))
    with pytest.raises(ValueError, match="increasing"):
        apportion(TIMELINE, [0.0, 1.0, 1.0], [5.0, 1.0], (0.0, 1.0))
    with pytest.raises(ValueError):
        apportion_summary([1.0], TIMELINE)


def test_request_latency_percentiles_over_completed_requests_with_usage() -> None:
    firsts = [0.1, 0.2, 0.3, 0.4, 1.0]
    itls = [0.01, 0.02, 0.03, 0.04, 0.10]
    records = [
        RequestRecord(
            i, sent_s=0.0, end_s=f + 10 * g, first_token_s=f, chunk_s=(f, f + 10 * g), output_tokens=11
        )
        for i, (f, g) in enumerate(zip(firsts, itls, strict=True))
    ]
    records += [
        RequestRecord(5, sent_s=0.0, end_s=9.0, first_token_s=0.01, output_tokens=11, error="HTTP 500: x"),
        RequestRecord(6, sent_s=0.0, end_s=9.0, first_token_s=0.01, chunk_s=(0.01, 9.0)),  # no usage
    ]
    lat = request_latency(records)
    assert lat.requests == 5
    assert lat.ttft_s is not None and lat.itl_s is not None and lat.e2e_s is not None
    # TTFT sorted 0.1 0.2 0.3 0.4 1.0: p50 0.3; p90 h = 3.6 -> 0.4 + 0.6 x 0.6; p99 h = 3.96; mean 2.0 / 5
    assert (lat.ttft_s.p50, lat.ttft_s.p90, lat.ttft_s.p99) == pytest.approx((0.3, 0.76, 0.976))
    assert lat.ttft_s.mean == pytest.approx(0.4)
    # ITL = (last chunk - first) / (11 - 1) = the g above: p50 0.03; p90 0.04 + 0.6 x 0.06; mean 0.2 / 5
    assert (lat.itl_s.p50, lat.itl_s.p90, lat.itl_s.p99) == pytest.approx((0.03, 0.076, 0.0976))
    assert lat.itl_s.mean == pytest.approx(0.04)
    # E2E = f + 10 g: 0.2 0.4 0.6 0.8 2.0 -> p50 0.6; p90 0.8 + 0.6 x 1.2; mean 4.0 / 5
    assert (lat.e2e_s.p50, lat.e2e_s.p90, lat.e2e_s.mean) == pytest.approx((0.6, 1.52, 0.8))
    # tokens/s = 11 / E2E: 55, 27.5, 18.33, 13.75, 5.5 -> p50 11 / 0.6
    assert lat.output_tokens_per_s is not None
    assert lat.output_tokens_per_s.p50 == pytest.approx(11 / 0.6)


def test_request_latency_fields_are_none_when_no_request_qualifies() -> None:
    one_token = RequestRecord(0, sent_s=0.0, end_s=0.5, first_token_s=0.25, chunk_s=(0.25,), output_tokens=1)
    lat = request_latency([one_token])
    assert lat.requests == 1 and lat.itl_s is None  # ITL needs two tokens
    assert lat.ttft_s is not None and lat.ttft_s.p99 == 0.25
    empty = request_latency([RequestRecord(0, sent_s=0.0, end_s=1.0, error="connection refused")])
    assert empty.requests == 0
    assert empty.ttft_s is None and empty.itl_s is None and empty.e2e_s is None
    assert empty.output_tokens_per_s is None


def test_net_interval_energy_integrates_the_trace_by_trapezoid() -> None:
    times, power = [0.0, 1.0, 2.0, 3.0], [100.0, 200.0, 200.0, 100.0]
    # [0, 0.5]: P 100 -> 150: 0.5 x 250 / 2 = 62.5, minus idle 50 x 0.5 -> 37.5
    # [0.5, 2]: 0.5 x (150 + 200) / 2 + 1 x 200 = 287.5, minus 75 -> 212.5
    # [2, 4]: 1 x (200 + 100) / 2 + 1 x 100 (held after the last sample) = 250, minus 100 -> 150
    net = net_interval_energy(times, power, 50.0, [0.0, 0.5, 2.0, 4.0])
    assert net == pytest.approx([37.5, 212.5, 150.0])
    # the intervals add up to the whole: 150 + 200 + 150 + 100 - 50 x 4 = 400
    assert math.fsum(net) == pytest.approx(400.0)
    assert net_interval_energy(times, power, 50.0, [-1.0, 0.0]) == pytest.approx([50.0])  # held before
    assert net_interval_energy(times, power, 300.0, [0.0, 1.0]) == pytest.approx([-150.0])  # below idle
    with pytest.raises(ValueError):
        net_interval_energy([1.0, 0.0], [1.0, 1.0], 0.0, [0.0, 1.0])


def test_scale_to_total_clips_negative_weights_and_splits_zero_equally() -> None:
    assert scale_to_total([1.0, -2.0, 3.0], 8.0) == pytest.approx([2.0, 0.0, 6.0])  # [1, 0, 3] x 8 / 4
    assert scale_to_total([0.0, -1.0], 10.0) == pytest.approx([5.0, 5.0])
    with pytest.raises(ValueError):
        scale_to_total([], 1.0)


@st.composite
def timelines(draw: st.DrawFn) -> tuple[list[RequestRecord], list[float], list[float]]:
    """Random records (some errored, some without usage), random edges over a window, random energy."""
    records = []
    for i in range(draw(st.integers(1, 8))):
        sent = draw(st.floats(0.0, 10.0))
        end = sent + draw(st.floats(0.0, 5.0))
        first = draw(st.none() | st.floats(sent, end))
        chunks = () if first is None else tuple(sorted(draw(st.lists(st.floats(first, end), max_size=4))))
        usage = draw(st.none() | st.integers(0, 30))
        error = draw(st.none() | st.just("timeout after 5 s"))
        records.append(RequestRecord(i, sent, end, first, chunks, output_tokens=usage, error=error))
    a = min(r.sent_s for r in records) - draw(st.floats(0.0, 2.0))
    b = max(r.end_s for r in records) + draw(st.floats(0.1, 2.0))
    inner = draw(st.lists(st.floats(a, b, exclude_min=True, exclude_max=True), max_size=30, unique=True))
    edges = [a, *sorted(inner), b]
    energy = draw(st.lists(st.floats(0.0, 1e4), min_size=len(edges) - 1, max_size=len(edges) - 1))
    return records, edges, energy


@settings(max_examples=300, deadline=None, database=None)
@given(timelines())
def test_apportioned_joules_sum_to_the_interval_energy(
    case: tuple[list[RequestRecord], list[float], list[float]],
) -> None:
    records, edges, energy = case
    joules = apportion(records, edges, energy, (edges[0], edges[-1]))
    assert len(joules) == len(records)
    assert all(j >= 0 for j in joules)
    total = math.fsum(energy)
    assert math.isclose(math.fsum(joules), total, rel_tol=1e-9, abs_tol=1e-12)
