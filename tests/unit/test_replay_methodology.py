"""Replays of real H200 runs: a model split over two GPUs, and a steady-state run.

The checks recompute figures from the committed trace and result, so they fail if the rules or the
schema drift from what the GPU runs wrote (see tests/fixtures/README.md for how they were made).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llem_mlflow.figures import quality
from llem_mlflow.measure import steady
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SPLIT = FIXTURES / "h200x2_tinyllama_split"
STEADY = FIXTURES / "h200_tinyllama_steady"


def _load(folder: Path) -> ExperimentResult:
    return artifacts.read_result_json(folder / "result.json")


def test_split_model_measures_both_gpus_and_they_sum_to_the_total() -> None:
    r = _load(SPLIT)
    assert r.resolved is not None and r.resolved.gpus == 2 and r.resolved.device_map == "balanced"
    assert r.resolved.measurement_hash() == r.measurement_config_hash
    assert r.energy is not None and [g.cuda_index for g in r.energy.per_gpu] == [0, 1]
    assert len({g.uuid for g in r.energy.per_gpu}) == 2
    assert all(g.gross_j > 0 for g in r.energy.per_gpu)
    assert sum(g.gross_j for g in r.energy.per_gpu) == pytest.approx(r.energy.gross_j)
    assert r.total_energy_j == pytest.approx(r.energy.gross_j)
    metrics = r.mlflow_metrics()
    assert metrics["energy/gpu0_j"] + metrics["energy/gpu1_j"] == pytest.approx(
        metrics["energy/gross_j"], abs=2e-3
    )
    assert r.mlflow_tags()["llem.gpu.count"] == "2"


def test_split_model_trace_has_both_gpus_in_every_window() -> None:
    r = _load(SPLIT)
    trace = artifacts.read_trace_parquet(SPLIT / "timeseries.parquet")
    assert trace.gpus() == [0, 1]
    assert r.cycles is not None and r.energy is not None
    for gpu in r.energy.per_gpu:
        inside = [trace.between(gpu.cuda_index, c.start_s, c.end_s) for c in r.cycles.records]
        assert all(len(samples) > 100 for samples in inside)
        assert sum(map(len, inside)) == gpu.samples_in_window


def test_steady_state_run_recomputes_its_cut_from_the_trace() -> None:
    r = _load(STEADY)
    s = r.steady_state
    assert r.measurement_methodology == "steady_state" and s is not None and r.cycles is not None
    trace = artifacts.read_trace_parquet(STEADY / "timeseries.parquet")
    assert s.trimmed_batches == [steady.ramp_batches(p) for p in s.batch_power_w]
    for index, record in enumerate(r.cycles.records):
        powers = s.batch_power_w[index]
        assert all(p is not None and 100 < p < 700 for p in powers)  # watts of one H200 under load
        assert s.full_window_gross_j is not None and record.gross_j is not None
        assert record.gross_j <= s.full_window_gross_j[index]
        assert record.duration_s == pytest.approx(s.full_window_s[index] - s.ramp_s[index], abs=0.01)
        # The first batch's power recomputed from the trace: the full window starts ramp_s before the cut.
        start = record.start_s - s.ramp_s[index]
        if s.trimmed_batches[index] == 0:
            assert s.ramp_s[index] == 0.0
        first = steady.batch_power_w(trace, [0], [start], start + 0.5)[0]
        assert first is not None and first == pytest.approx(powers[0], rel=0.5)
    assert min(c.duration_s for c in r.cycles.records) >= 30.0  # long enough for steady state
    assert "short_window" not in r.quality_flags


def test_steady_state_result_logs_its_trim() -> None:
    r = _load(STEADY)
    assert r.steady_state is not None
    assert r.mlflow_metrics()["steady/trimmed_batches"] == float(sum(r.steady_state.trimmed_batches))
    assert r.idle_settle is not None and r.idle_settle.settled


def test_brief_sw_power_cap_flicker_is_not_a_throttling_flag() -> None:
    # The run was written when any SW power cap sample flagged; the bit was set in 7 of ~2,100 samples.
    r = _load(STEADY)
    assert r.cycles is not None and "SW power cap" in r.quality_flags["throttling"]
    trace = artifacts.read_trace_parquet(STEADY / "timeseries.parquet")
    inside = [s.throttle_reasons for c in r.cycles.records for s in trace.between(0, c.start_s, c.end_s)]
    capped = [m for m in inside if m is not None and m & quality.SW_POWER_CAP]
    assert 0 < len(capped) < 0.01 * len([m for m in inside if m is not None])
    assert quality.check_throttling(inside) is None


def test_the_run_description_summarises_the_result() -> None:
    r = _load(SPLIT)
    note = r.mlflow_tags()["mlflow.note.content"]
    assert note.startswith("**TinyLlama/TinyLlama-1.1B-Chat-v1.0**") and "batch 64, 3 cycles" in note
    assert "0.1205 J per output token" in note and "2 GPUs" in note and "Quality flags: none" in note
    assert r.measurement_config_hash in note


SIGINT = FIXTURES / "h200_gpt2_sigint"


def test_a_run_interrupted_3_s_into_its_window_keeps_the_completed_batches() -> None:
    """The H200 run of issue 16: SIGINT 3 s into a default run's window (gpt2, batch 8, 64 new tokens)."""
    r = _load(SIGINT)
    assert r.status == "interrupted"
    (cycle,) = r.cycles.records
    assert cycle.partial is not None and cycle.partial.batches == r.config.n // r.config.batch_size
    done = cycle.partial.completed_batches
    assert 0 < done < cycle.partial.batches
    assert r.output_tokens == cycle.output_tokens == done * r.config.batch_size * r.config.max_output_tokens
    assert 2.5 < r.total_inference_time_sec < 4.0  # the signal came 3 s in
    assert 0 < cycle.partial.abandoned_s < r.total_inference_time_sec
    assert r.energy is not None and r.energy.gross_j is not None and r.energy.gross_j > 0
    avg_power_w = r.energy.gross_j / r.total_inference_time_sec
    assert r.energy.idle_power_w is not None and r.energy.idle_power_w < avg_power_w < 700  # H200 limit
    assert any("kept as a partial cycle" in w for w in r.warnings)
    assert r.mlflow_tags()["llem.status"] == "interrupted"
