"""TTFT / inter-token latency summary over BatchStats step timings (pure arithmetic on literal values)."""

from __future__ import annotations

import pydantic
import pytest

from llem_mlflow.figures.latency import PERCENTILE_METHOD, LatencySummary, percentile, summarize_latency
from llem_mlflow.protocols import BatchStats
from tests.fakes import FAKE_DECODE_STEP_S, FAKE_PREFILL_S, FakeBackend


def batch(prefill_s: float | None, decode_step_s: tuple[float, ...] = (), rows: int = 2) -> BatchStats:
    new = len(decode_step_s) + 1
    return BatchStats(
        input_tokens=4 * rows,
        output_tokens=new * rows,
        padded_input_len=4,
        new_tokens=new,
        batch_size=rows,
        prefill_s=prefill_s,
        decode_step_s=decode_step_s,
    )


def test_percentile_interpolates_linearly_between_closest_ranks() -> None:
    values = [0.9, 0.1, 2.0, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6]  # sorted: 0.1 .. 0.9, 2.0
    assert percentile(values, 0) == pytest.approx(0.1)
    assert percentile(values, 50) == pytest.approx(0.55)  # h = 4.5: 0.5 + 0.5 x (0.6 - 0.5)
    assert percentile(values, 90) == pytest.approx(1.01)  # h = 8.1: 0.9 + 0.1 x (2.0 - 0.9)
    assert percentile(values, 99) == pytest.approx(1.901)  # h = 8.91: 0.9 + 0.91 x 1.1
    assert percentile(values, 100) == pytest.approx(2.0)
    assert percentile([0.25], 99) == 0.25
    assert percentile([1.0, 3.0], 50) == 2.0
    assert PERCENTILE_METHOD == "linear"


def test_percentile_matches_numpys_default() -> None:
    np = pytest.importorskip("numpy")
    values = [0.013, 0.002, 0.0051, 0.0049, 0.007, 0.0031, 0.0099]
    for q in (0, 10, 25, 50, 75, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q, method="linear")))


def test_percentile_rejects_no_values_and_q_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="0..100"):
        percentile([1.0], 101)


def test_summary_pools_decode_steps_and_takes_one_ttft_per_batch() -> None:
    batches = [
        batch(0.5, (0.4, 0.1, 2.0, 0.3)),
        batch(0.3, (0.9, 0.5, 0.6, 0.8, 0.7, 0.2), rows=8),  # rows do not weight anything
        batch(1.0),  # one new token: a TTFT, no decode step
        batch(None),  # untimed: left out
    ]
    summary = summarize_latency(batches)
    assert summary is not None
    assert summary.model_dump() == pytest.approx(
        {
            "ttft_p50_s": 0.5,  # of 0.3, 0.5, 1.0
            "ttft_mean_s": 0.6,
            "itl_p50_s": 0.55,
            "itl_p90_s": 1.01,
            "itl_p99_s": 1.901,
            "itl_mean_s": 0.65,  # 6.5 / 10
            "prefill_s": 1.8,
            "decode_s": 6.5,
            "steps": 10,
        }
    )
    assert summary.steps == 10


def test_summary_without_decode_steps_has_no_itl() -> None:
    summary = summarize_latency([batch(0.25), batch(0.75)])
    assert summary == LatencySummary(
        ttft_p50_s=0.5,
        ttft_mean_s=0.5,
        itl_p50_s=None,
        itl_p90_s=None,
        itl_p99_s=None,
        itl_mean_s=None,
        prefill_s=1.0,
        decode_s=0.0,
        steps=0,
    )


def test_no_summary_without_timings() -> None:
    assert summarize_latency([]) is None
    assert summarize_latency([batch(None), batch(None)]) is None


def test_summary_is_frozen_and_strict() -> None:
    summary = summarize_latency([batch(0.5, (0.1,))])
    assert summary is not None
    with pytest.raises(pydantic.ValidationError):
        summary.steps = 3  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        LatencySummary(**summary.model_dump(), extra_field=1.0)


def test_fake_backend_scripts_step_timings() -> None:
    default = FakeBackend().generate([[1, 2], [3]], max_output_tokens=5)
    assert (default.prefill_s, default.decode_step_s) == (FAKE_PREFILL_S, (FAKE_DECODE_STEP_S,) * 4)
    cycled = FakeBackend(prefill_s=0.5, decode_step_s=(0.1, 0.2)).generate([[1]], max_output_tokens=4)
    assert (cycled.prefill_s, cycled.decode_step_s) == (0.5, (0.1, 0.2, 0.1))
    untimed = FakeBackend(prefill_s=None).generate([[1]], max_output_tokens=4)
    assert (untimed.prefill_s, untimed.decode_step_s) == (None, ())
    summary = summarize_latency([FakeBackend().generate([[1]], max_output_tokens=3) for _ in range(2)])
    assert summary is not None
    assert (summary.ttft_p50_s, summary.itl_p99_s, summary.steps) == (FAKE_PREFILL_S, FAKE_DECODE_STEP_S, 4)
    assert summary.decode_s == pytest.approx(4 * FAKE_DECODE_STEP_S)
