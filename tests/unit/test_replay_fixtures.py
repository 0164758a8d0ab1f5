"""Replay of a real H200 run: the schema, the trace and MLflow logging of a result that came from a GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "h200_gpt2"


@pytest.fixture
def real() -> ExperimentResult:
    return artifacts.read_result_json(FIXTURE / "result.json")


def test_schema_round_trip(real: ExperimentResult) -> None:
    assert real.schema_version == "2.0" and real.energy_source == "nvml"
    again = ExperimentResult.model_validate_json(real.model_dump_json())
    assert again == real
    assert real.total_tokens == real.input_tokens + real.output_tokens
    assert real.avg_energy_per_token_j == pytest.approx(real.total_energy_j / real.output_tokens)  # type: ignore[operator]


def test_trace_covers_window_and_matches_stored_cross_check(real: ExperimentResult) -> None:
    trace = artifacts.read_trace_parquet(FIXTURE / "timeseries.parquet")
    window = real.windows["measure"]
    samples = trace.for_gpu(0)
    assert samples[0].timestamp_s < window.start_s and samples[-1].timestamp_s > window.end_s
    assert real.energy is not None
    gpu = real.energy.per_gpu[0]
    assert len(trace.between(0, window.start_s, window.end_s)) == gpu.samples_in_window
    assert trace.integrate_j(0, window.start_s, window.end_s) == pytest.approx(gpu.trace_integral_j)
    meta = pq.read_schema(FIXTURE / "timeseries.parquet").metadata
    assert json.loads(meta[b"llem.windows"])["measure"] == [window.start_s, window.end_s]


def test_mlflow_logging_of_a_real_gpu_result(real: ExperimentResult, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from llem_mlflow.tracking.client import record_result

    trace = artifacts.read_trace_parquet(FIXTURE / "timeseries.parquet")
    files = [FIXTURE / "result.json", FIXTURE / "timeseries.parquet"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged = record_result(real, files, trace, tracking_uri=uri, experiment_name="replay", run_name="h200")
    run_id = logged.run_id
    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert (
        run.data.tags["llem.gpu.name"] == "NVIDIA H200" and run.data.tags["llem.env.driver"] == "580.159.04"
    )
    assert run.data.metrics["energy/total_j"] == pytest.approx(real.total_energy_j)
    assert run.data.metrics["energy/net_j"] == round(real.energy.net_j, 3)  # type: ignore[union-attr]  # mJ
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "power/gpu0_w")
    assert [h.value for h in history] == [s.power_w for s in trace.for_gpu(0)]
    assert [h.timestamp for h in history] == [int(s.timestamp_s * 1000) for s in trace.for_gpu(0)]


@pytest.mark.parametrize("name", ["h200_gpt2_bs8", "h200_gpt2_bs16"])
def test_recipe_2_fixture_names_what_was_measured(name: str) -> None:
    real = artifacts.read_result_json(FIXTURE.parent / name / "result.json")
    assert real.resolved is not None and real.resolved.recipe == 2
    assert (real.config.device, real.config.precision) == ("auto", "auto")  # as requested
    assert (real.resolved.device, real.resolved.precision, real.resolved.weights) == (
        "cuda",
        "bf16",
        "random",
    )
    assert real.measurement_config_hash == real.resolved.measurement_hash()
    assert real.output_tokens == 64 * 128 and real.energy is not None and real.energy.net_j is not None
