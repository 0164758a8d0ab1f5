"""record_result, log_folder and probe_store over HTTP against a real MLflow tracking server."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.tracking import client as tracking
from llem_mlflow.tracking import recording

pytestmark = pytest.mark.slow


def test_record_result_over_http(
    mlflow_server: str, sample_result: tuple[ExperimentResult, PowerTrace], tmp_path: Path
) -> None:
    result, trace = sample_result
    out = tmp_path / "out"
    out.mkdir()
    windows = {k: (w.start_s, w.end_s) for k, w in result.windows.items()}
    files = [artifacts.write_result_json(result, out), artifacts.write_trace_parquet(trace, out, windows)]

    run_id = tracking.record_result(
        result, files, trace, tracking_uri=mlflow_server, experiment_name="http-test", run_name="over-http"
    ).run_id

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "over-http"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert result.mlflow_tags().items() <= run.data.tags.items()
    assert run.data.params == result.mlflow_params()
    for key, value in result.mlflow_metrics().items():
        assert run.data.metrics[key] == pytest.approx(value)
    history = [m for gpu in trace.gpus() for m in client.get_metric_history(run_id, f"power/gpu{gpu}_w")]
    assert len(history) == len(trace.samples)
    measure_start_ms = int(result.windows["measure"].start_s * 1000)
    assert {m.step for m in history} == {m.timestamp - measure_start_ms for m in history}
    assert min(m.step for m in history) == -1500  # negative steps survive the REST API
    assert run.info.start_time == int(result.start_time.timestamp() * 1000)
    assert run.info.end_time == int(result.end_time.timestamp() * 1000)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for f in files:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f.name, dst_path=str(tmp_path / "dl"), tracking_uri=mlflow_server
        )
        assert Path(local).read_bytes() == f.read_bytes()
    assert MlflowClient().get_experiment_by_name("http-test") is None  # nothing went to the local store


def test_probe_finds_the_server(mlflow_server: str) -> None:
    assert tracking.probe_store(mlflow_server) is None
    assert tracking.probe_store(mlflow_server + "/") is None


def test_log_folder_twice_over_http_leaves_one_run(
    mlflow_server: str, sample_result: tuple[ExperimentResult, PowerTrace], tmp_path: Path
) -> None:
    result, trace = sample_result
    result = result.model_copy(update={"experiment_id": "http-twice-20260101T000000Z-abc123"})
    folder = tmp_path / result.experiment_id
    folder.mkdir()
    artifacts.write_result_json(result, folder)
    artifacts.write_trace_parquet(trace, folder, {k: (w.start_s, w.end_s) for k, w in result.windows.items()})

    first = recording.log_folder(folder, mlflow_server, "http-twice", None)
    second = recording.log_folder(folder, mlflow_server, "http-twice", None)

    assert second.already_logged and second.run_id == first.run_id
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("http-twice")
    assert experiment is not None
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [first.run_id]
