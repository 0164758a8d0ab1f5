"""log_result over HTTP against a real MLflow tracking server process (proxied artifacts)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from llem_mlflow import artifacts, tracking
from llem_mlflow.result import ExperimentResult
from llem_mlflow.trace import PowerTrace

pytestmark = pytest.mark.slow


def test_log_result_over_http(
    mlflow_server: str, sample_result: tuple[ExperimentResult, PowerTrace], tmp_path: Path
) -> None:
    result, trace = sample_result
    out = tmp_path / "out"
    out.mkdir()
    windows = {k: (w.start_s, w.end_s) for k, w in result.windows.items()}
    files = [artifacts.write_result_json(result, out), artifacts.write_trace_parquet(trace, out, windows)]

    run_id = tracking.log_result(
        result, files, trace, tracking_uri=mlflow_server, experiment_name="http-test", run_name="over-http"
    )

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
    for f in files:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f.name, dst_path=str(tmp_path / "dl"), tracking_uri=mlflow_server
        )
        assert Path(local).read_bytes() == f.read_bytes()
    assert MlflowClient().get_experiment_by_name("http-test") is None  # nothing went to the local store
