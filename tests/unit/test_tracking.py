"""log_result against a real sqlite MLflow store: run selection, keys, trace history, artifacts."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import free_port

from llem_mlflow import artifacts, tracking
from llem_mlflow.errors import TrackingError
from llem_mlflow.result import ExperimentResult
from llem_mlflow.trace import PowerTrace

Sample = tuple[ExperimentResult, PowerTrace]


def write_files(result: ExperimentResult, trace: PowerTrace, directory: Path) -> list[Path]:
    windows = {k: (w.start_s, w.end_s) for k, w in result.windows.items()}
    directory.mkdir(parents=True, exist_ok=True)
    return [
        artifacts.write_result_json(result, directory),
        artifacts.write_trace_parquet(trace, directory, windows),
    ]


def log(result: ExperimentResult, files: list[Path], trace: PowerTrace, **kwargs: str | None) -> str:
    opts: dict[str, str | None] = {"tracking_uri": None, "experiment_name": None, "run_name": None}
    opts.update(kwargs)
    return tracking.log_result(result, files, trace, **opts)


def test_new_run_has_everything(tmp_path: Path, sample_result: Sample) -> None:
    result, trace = sample_result
    files = write_files(result, trace, tmp_path / "out")
    run_id = log(result, files, trace, experiment_name="energy-bench", run_name="gpt2-bf16")

    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "energy-bench"
    assert run.info.run_name == "gpt2-bf16"
    assert run.data.params == result.mlflow_params()
    assert result.mlflow_tags().items() <= run.data.tags.items()
    assert run.data.metrics == pytest.approx(
        {
            **result.mlflow_metrics(),
            "power/gpu0_w": run.data.metrics["power/gpu0_w"],
            "power/gpu1_w": run.data.metrics["power/gpu1_w"],
        }
    )
    assert "energy/total_j" in run.data.metrics
    assert not any(k.startswith("system/") for k in run.data.metrics)


def test_power_history_keeps_sample_timestamps_and_steps(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    run_id = log(result, write_files(result, trace, tmp_path), trace)
    client = MlflowClient()
    for gpu in trace.gpus():
        history = sorted(client.get_metric_history(run_id, f"power/gpu{gpu}_w"), key=lambda m: m.step)
        samples = trace.for_gpu(gpu)
        assert [m.step for m in history] == list(range(len(samples)))
        assert [m.value for m in history] == [s.power_w for s in samples]
        assert [m.timestamp for m in history] == [int(s.timestamp_s * 1000) for s in samples]


def test_artifacts_at_root_are_byte_equal(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    files = write_files(result, trace, tmp_path / "out")
    run_id = log(result, files, trace)
    listed = sorted(a.path for a in MlflowClient().list_artifacts(run_id))
    assert listed == sorted(f.name for f in files)
    for f in files:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f.name, dst_path=str(tmp_path / "dl")
        )
        assert Path(local).read_bytes() == f.read_bytes()


def test_default_experiment_name(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    run_id = log(result, write_files(result, trace, tmp_path), trace)
    client = MlflowClient()
    assert client.get_experiment(client.get_run(run_id).info.experiment_id).name == "llem-mlflow"


def test_active_run_is_used_and_left_open(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    with mlflow.start_run() as user_run:
        run_id = log(result, write_files(result, trace, tmp_path), trace, experiment_name="ignored")
        assert run_id == user_run.info.run_id
        assert mlflow.active_run() is not None
        assert MlflowClient().get_run(run_id).info.status == "RUNNING"
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.run_id for r in runs] == [run_id]
    assert MlflowClient().get_run(run_id).data.metrics["tokens/total"] == 256.0


def test_mlflow_run_id_resumes_prelogged_run(
    sample_result: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, trace = sample_result
    client = MlflowClient()
    exp_id = client.create_experiment("project-exp")
    pre = client.create_run(exp_id, tags={"mlflow.source.type": "PROJECT"})
    client.log_batch(
        pre.info.run_id, params=[mlflow.entities.Param("model", "gpt2"), mlflow.entities.Param("n", "04")]
    )
    monkeypatch.setenv("MLFLOW_RUN_ID", pre.info.run_id)

    run_id = log(result, write_files(result, trace, tmp_path), trace, experiment_name="must-not-be-used")

    assert run_id == pre.info.run_id
    assert "MLFLOW_RUN_ID" not in os.environ
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.run_id for r in runs] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == exp_id
    assert client.get_experiment_by_name("must-not-be-used") is None
    assert run.data.params["model"] == "gpt2"
    assert run.data.params["n"] == "04"
    assert run.data.params["cfg.n"] == "4"
    assert "cfg.model" not in run.data.params
    assert run.data.params["batch_size"] == "2"


def test_param_conflict_logic_skips_known_and_namespaces_changed() -> None:
    ours = {"a": "1", "b": "2", "c": "3"}
    out = tracking._params(ours, {"a": "1", "b": "two", "cfg.c": "x", "c": "y"})
    assert {(p.key, p.value) for p in out} == {("cfg.b", "2")}


def test_no_energy_metrics_without_energy(tmp_path: Path, cpu_result: ExperimentResult) -> None:
    result = cpu_result
    trace = PowerTrace(interval_s=0.015)
    run_id = log(result, write_files(result, trace, tmp_path), trace)
    metrics = MlflowClient().get_run(run_id).data.metrics
    assert metrics == pytest.approx(result.mlflow_metrics())
    assert not any(k.startswith(("energy/", "power/", "quality/")) for k in metrics)
    assert "tokens/total" in metrics


def test_failure_mid_logging_marks_run_failed(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    files = [*write_files(result, trace, tmp_path), tmp_path / "missing.json"]
    with pytest.raises(TrackingError, match="marked FAILED") as info:
        log(result, files, trace)
    assert "missing.json" in str(info.value)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.status for r in runs] == ["FAILED"]


def test_failure_in_active_run_leaves_it_running(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    with mlflow.start_run() as user_run:
        with pytest.raises(TrackingError, match="left open"):
            log(result, [tmp_path / "missing.json"], trace)
        assert MlflowClient().get_run(user_run.info.run_id).info.status == "RUNNING"


def test_unreachable_server_error_has_scrubbed_uri(sample_result: Sample) -> None:
    result, trace = sample_result
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError) as info:
        log(result, [], trace, tracking_uri=uri)
    message = str(info.value)
    assert "s3cret" not in message and "alice" not in message
    assert f"http://127.0.0.1:{uri.rsplit(':', 1)[1]}" in message


def test_resolve_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert tracking.resolve_tracking_uri("http://x:5000") == "http://x:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.resolve_tracking_uri(None) == "http://env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_scrub_uri() -> None:
    assert tracking.scrub_uri("https://u:p@host/x?token=abc&a=1") == "https://host/x?token=***&a=1"
    assert tracking.scrub_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_mlflow_version_matches_installed() -> None:
    assert tracking.mlflow_version() == mlflow.__version__
