"""record_result against a real sqlite MLflow store: run selection, times, names, trace history, probe."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import free_port

from llem_mlflow.errors import TrackingError
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.tracking import client as tracking
from llem_mlflow.tracking import result_logging

Sample = tuple[ExperimentResult, PowerTrace]
T0_MS = 1_767_225_600_000  # conftest T0, 2026-01-01T00:00:00Z
MEASURE_START_MS = T0_MS + 1500
MEASURE_END_MS = T0_MS + 3500


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
    return tracking.record_result(result, files, trace, **opts).run_id


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


def test_the_prompt_set_is_the_run_dataset_input(tmp_path: Path, sample_result: Sample) -> None:
    result, trace = sample_result
    run = MlflowClient().get_run(log(result, write_files(result, trace, tmp_path / "out"), trace))
    (entry,) = run.inputs.dataset_inputs
    cfg = result.config
    assert entry.dataset.name == cfg.dataset == "synthetic" and len(entry.dataset.digest) == 16
    spec = f"synthetic seed={cfg.seed} n={cfg.n} max_input_tokens={cfg.max_input_tokens}"
    assert entry.dataset.source == spec
    assert [(t.key, t.value) for t in entry.tags] == [("mlflow.data.context", "measurement")]
    other = result.model_copy(update={"config": cfg.model_copy(update={"seed": cfg.seed + 1})})
    assert tracking._prompt_dataset(other).dataset.digest != entry.dataset.digest


def test_owned_run_spans_the_measurement_not_the_logging(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    run = MlflowClient().get_run(log(result, write_files(result, trace, tmp_path), trace))
    assert (run.info.start_time, run.info.end_time) == (T0_MS, MEASURE_END_MS)


def test_power_history_steps_are_ms_since_the_measured_window(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    run_id = log(result, write_files(result, trace, tmp_path), trace)
    client = MlflowClient()
    for gpu in trace.gpus():
        history = sorted(client.get_metric_history(run_id, f"power/gpu{gpu}_w"), key=lambda m: m.step)
        samples = trace.for_gpu(gpu)
        assert [m.timestamp for m in history] == [int(s.timestamp_s * 1000) for s in samples]
        assert [m.step for m in history] == [m.timestamp - MEASURE_START_MS for m in history]
        assert [m.value for m in history] == [s.power_w for s in samples]
    gpu0 = sorted(client.get_metric_history(run_id, "power/gpu0_w"), key=lambda m: m.step)
    assert gpu0[0].step == -1500  # idle samples precede the window: negative steps are kept
    assert 0 in [m.step for m in gpu0]


def test_long_traces_log_a_thinned_power_history(
    sample_result: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, _ = sample_result
    monkeypatch.setattr(result_logging, "MAX_POWER_POINTS", 4)
    start = result.windows["measure"].start_s
    samples = [
        TraceSample(timestamp_s=start + i * 0.1, gpu=g, power_w=100.0 + i) for g in (0, 1) for i in range(10)
    ]
    trace = PowerTrace(0.1, samples)
    files = write_files(result, trace, tmp_path)
    run_id = log(result, files, trace)
    for gpu in (0, 1):
        history = sorted(MlflowClient().get_metric_history(run_id, f"power/gpu{gpu}_w"), key=lambda m: m.step)
        assert [m.value for m in history] == [101.0, 104.0, 107.0, 109.0]  # bucket means of 3, 3, 3, 1
        assert [m.step for m in history] == [0, 300, 600, 900]
    assert len(artifacts.read_trace_parquet(files[1]).samples) == 20  # the Parquet file keeps every sample


def test_power_values_are_rounded_to_milliwatts(sample_result: Sample, tmp_path: Path) -> None:
    result, _ = sample_result
    trace = PowerTrace(
        0.1, [TraceSample(timestamp_s=result.windows["measure"].start_s, gpu=0, power_w=310.5004999)]
    )
    run_id = log(result, write_files(result, trace, tmp_path), trace)
    (point,) = MlflowClient().get_metric_history(run_id, "power/gpu0_w")
    assert (point.value, point.step) == (310.5, 0)


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


def test_default_experiment_and_run_name(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    run = MlflowClient().get_run(log(result, write_files(result, trace, tmp_path), trace))
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.name == "llem-mlflow"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.run_name == "gpt2-bs2-bf16"


def test_experiment_name_from_env(
    sample_result: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, trace = sample_result
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    run = MlflowClient().get_run(log(result, write_files(result, trace, tmp_path), trace))
    assert MlflowClient().get_experiment(run.info.experiment_id).name == "from-env"
    assert tracking.resolve_experiment_name("given") == "given"


def test_run_name_uses_the_model_tail(sample_result: Sample) -> None:
    result, _ = sample_result
    hub = result.model_copy(update={"model": "openai-community/gpt2-large", "precision": "fp16"})
    assert tracking.default_run_name(hub) == "gpt2-large-bs2-fp16"


def test_existing_experiment_kind_is_set_once_and_never_overwritten(
    sample_result: Sample, tmp_path: Path
) -> None:
    result, trace = sample_result
    client = MlflowClient()
    bare = client.create_experiment("bare")
    genai = client.create_experiment("genai", tags={"mlflow.experimentKind": "genai_development"})
    files = write_files(result, trace, tmp_path)
    log(result, files, trace, experiment_name="bare")
    log(result, files, trace, experiment_name="genai")
    assert client.get_experiment(bare).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(genai).tags["mlflow.experimentKind"] == "genai_development"


def test_active_run_is_used_and_left_open(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    with mlflow.start_run(run_name="mine") as user_run:
        run_id = log(result, write_files(result, trace, tmp_path), trace, experiment_name="ignored")
        assert run_id == user_run.info.run_id
        assert mlflow.active_run() is not None
        assert MlflowClient().get_run(run_id).info.status == "RUNNING"
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.run_name == "mine"
    assert MlflowClient().get_run(run_id).data.metrics["tokens/total"] == 256.0


def _project_run(client: MlflowClient, experiment_id: str, run_name: str | None = None) -> str:
    """A run as `mlflow run` leaves it: PROJECT source, params pre-logged as raw strings."""
    pre = client.create_run(experiment_id, tags={"mlflow.source.type": "PROJECT"}, run_name=run_name)
    client.log_batch(
        pre.info.run_id, params=[mlflow.entities.Param("model", "gpt2"), mlflow.entities.Param("n", "04")]
    )
    return str(pre.info.run_id)


def test_mlflow_run_id_resumes_prelogged_run(
    sample_result: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, trace = sample_result
    client = MlflowClient()
    exp_id = client.create_experiment("project-exp")
    pre_id = _project_run(client, exp_id)
    created_ms = client.get_run(pre_id).info.start_time
    monkeypatch.setenv("MLFLOW_RUN_ID", pre_id)

    run_id = log(result, write_files(result, trace, tmp_path), trace, experiment_name="must-not-be-used")

    assert run_id == pre_id
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
    assert run.info.run_name == "gpt2-bs2-bf16"  # MLflow's random name replaced
    assert (run.info.start_time, run.info.end_time) == (created_ms, MEASURE_END_MS)
    assert client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_mlflow_run_name_given_by_the_user_is_kept(
    sample_result: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, trace = sample_result
    client = MlflowClient()
    pre_id = _project_run(client, client.create_experiment("named"), run_name="my-sweep-7")
    monkeypatch.setenv("MLFLOW_RUN_ID", pre_id)
    log(result, write_files(result, trace, tmp_path), trace)
    assert client.get_run(pre_id).info.run_name == "my-sweep-7"


def test_mlflow_run_in_default_experiment_warns(
    sample_result: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    result, trace = sample_result
    pre_id = _project_run(MlflowClient(), "0")
    monkeypatch.setenv("MLFLOW_RUN_ID", pre_id)
    log(result, write_files(result, trace, tmp_path), trace)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "llem_mlflow.tracking.run_selection"]
    assert "Default experiment" in warning
    assert "mlflow run . --experiment-name llem-mlflow" in warning


def test_param_conflict_logic_skips_known_and_namespaces_changed() -> None:
    ours = {"a": "1", "b": "2", "c": "3"}
    out = tracking._params(ours, {"a": "1", "b": "two", "cfg.c": "x", "c": "y"})
    assert {(p.key, p.value) for p in out} == {("cfg.b", "2")}


def test_resolved_settings_are_params_and_recipe_is_a_tag(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    run = MlflowClient().get_run(log(result, write_files(result, trace, tmp_path), trace))
    assert run.data.params["resolved.precision"] == "bf16"
    assert run.data.params["resolved.device"] == "cuda"
    assert run.data.params["resolved.model_revision"] == "607a30d783dfa663caf39e06633721c8d4cfcd7e"
    assert run.data.params["resolved.backend_options"] == "{}"
    assert run.data.params["resolved.recipe"] == "7"
    assert "resolved.tokenizer" not in run.data.params  # null: omitted
    assert run.data.tags["llem.hash_recipe"] == "7"


def test_old_result_without_resolved_logs_no_resolved_keys(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    old = result.model_copy(update={"resolved": None})
    run = MlflowClient().get_run(log(old, write_files(old, trace, tmp_path), trace))
    assert not any(k.startswith("resolved.") for k in run.data.params)
    assert "llem.hash_recipe" not in run.data.tags


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


def test_dead_http_store_costs_seconds_and_one_line(
    sample_result: Sample, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, trace = sample_result
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")  # MLflow's own default: 7 retries, ~4 min
    port = free_port()
    started = time.monotonic()
    with pytest.raises(TrackingError) as info:
        log(result, [], trace, tracking_uri=f"http://127.0.0.1:{port}")
    assert time.monotonic() - started < 10
    assert str(info.value) == (
        f"MLflow tracking store http://127.0.0.1:{port} is unreachable: nothing listens on "
        f"127.0.0.1:{port} (connection refused); start the tracking server or fix --tracking-uri / "
        "MLFLOW_TRACKING_URI"
    )


def test_unopenable_sqlite_store_costs_seconds_and_one_line(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    (tmp_path / "mlflow.db").mkdir()  # MLflow itself retries opening this for ~100 s
    started = time.monotonic()
    with pytest.raises(TrackingError) as info:
        log(result, [], trace, tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert time.monotonic() - started < 5
    assert len(str(info.value).splitlines()) == 1
    assert "points at a folder, not a database file" in str(info.value)


def test_sqlite_engine_retries_are_bounded_past_the_probe(tmp_path: Path) -> None:
    """A store that breaks after the probe passed fails at once, not after MLflow's ~100 s of retries."""
    (tmp_path / "mlflow.db").mkdir()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking._prepare_mlflow(uri)  # what tracking does before every MlflowClient, after the probe
    started = time.monotonic()
    with pytest.raises(Exception, match="unable to open database file"):
        MlflowClient(tracking_uri=uri)
    assert time.monotonic() - started < 5


def test_http_defaults_bound_retries_unless_the_user_set_them(
    sample_result: Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, trace = sample_result
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    log(result, write_files(result, trace, tmp_path), trace)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_first_time_sqlite_store_prints_no_mlflow_housekeeping(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    write_files(result, trace, tmp_path / "out")
    code = (
        "import sys; from pathlib import Path; from llem_mlflow.tracking import recording; "
        "recording.log_folder(Path(sys.argv[1]), sys.argv[2], None, None)"
    )
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "out"), uri],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fresh.db").is_file()
    assert proc.stderr == ""


# --- probe_store -------------------------------------------------------------------------------


class _NotMlflow(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_mlflow() -> Iterator[str]:
    """An HTTP server that answers 404 to everything."""
    server = HTTPServer(("127.0.0.1", 0), _NotMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_probe_http_that_is_not_mlflow(not_mlflow: str) -> None:
    problem = tracking.probe_store(not_mlflow)
    assert problem == (
        f"MLflow tracking store {not_mlflow} answers HTTP 404 at /health and HTTP 404 at the "
        "experiments API: is this an MLflow tracking server? Check the URI"
    )


def test_probe_http_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts TCP (backlog) but never answers HTTP
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        started = time.monotonic()
        problem = tracking.probe_store(f"http://127.0.0.1:{port}", timeout_s=0.5)
    assert time.monotonic() - started < 3
    assert problem is not None and "did not answer within 0.5 s" in problem


def test_probe_sqlite(tmp_path: Path) -> None:
    assert tracking.probe_store(f"sqlite:///{tmp_path}/new.db") is None
    assert tracking.probe_store("sqlite://") is None
    missing = tmp_path / "no" / "such"
    assert tracking.probe_store(f"sqlite:///{missing}/mlflow.db") == (
        f"MLflow tracking store sqlite:///{missing}/mlflow.db cannot be opened: folder {missing} does not "
        f"exist; create it (mkdir -p {missing}) or fix the URI"
    )
    (tmp_path / "junk.db").write_text("not a database")
    problem = tracking.probe_store(f"sqlite:///{tmp_path}/junk.db")
    assert problem is not None and "is not an SQLite database" in problem
    assert not (tmp_path / "new.db").exists()  # the probe never creates the store


def test_probe_existing_sqlite_store(sample_result: Sample, tmp_path: Path, isolated_mlflow: str) -> None:
    result, trace = sample_result
    log(result, write_files(result, trace, tmp_path), trace)
    assert tracking.probe_store(isolated_mlflow) is None


def test_probe_database_server_port() -> None:
    port = free_port()
    problem = tracking.probe_store(f"postgresql://bob:pw@127.0.0.1:{port}/mlflow", timeout_s=1)
    assert problem == (
        f"MLflow tracking store postgresql://bob@127.0.0.1:{port}/mlflow is unreachable: nothing listens on "
        f"127.0.0.1:{port} (connection refused); start the tracking server or fix --tracking-uri / "
        "MLFLOW_TRACKING_URI"
    )


def test_probe_does_not_import_mlflow(tmp_path: Path) -> None:
    code = (
        "import sys; from llem_mlflow.tracking import client as tracking; "
        f"tracking.probe_store('sqlite:///{tmp_path}/x.db'); tracking.probe_store('http://127.0.0.1:9'); "
        "print('mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_resolve_tracking_uri(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert tracking.resolve_tracking_uri("http://x:5000") == "http://x:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.resolve_tracking_uri(None) == "http://env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_tracking_uri(None) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_target_tracking_uri_inside_mlflow_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-mlflow-run:5000")
    assert tracking.target_tracking_uri("http://config:5000") == "http://config:5000"
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc")
    assert tracking.target_tracking_uri("http://config:5000") == "http://from-mlflow-run:5000"


def test_scrub_uri() -> None:
    assert tracking.scrub_uri("https://u:p@host/x?token=abc&a=1") == "https://host/x?token=***&a=1"
    assert tracking.scrub_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_mlflow_version_matches_installed() -> None:
    assert tracking.mlflow_version() == mlflow.__version__
