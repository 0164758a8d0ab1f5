"""log_folder against a real sqlite store: a result folder is logged once, and remembers its run."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import free_port

from llem_mlflow.errors import TrackingError
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.tracking import recording

Sample = tuple[ExperimentResult, PowerTrace]


@pytest.fixture
def folder(sample_result: Sample, tmp_path: Path) -> Path:
    """A result folder as the runner leaves it: result.json and timeseries.parquet."""
    result, trace = sample_result
    out = tmp_path / result.experiment_id
    out.mkdir()
    windows = {k: (w.start_s, w.end_s) for k, w in result.windows.items()}
    artifacts.write_result_json(result, out)
    artifacts.write_trace_parquet(trace, out, windows)
    return out


def all_runs() -> list[mlflow.entities.Run]:
    return list(mlflow.search_runs(search_all_experiments=True, output_format="list"))


def test_logging_a_folder_twice_leaves_one_run(folder: Path, isolated_mlflow: str) -> None:
    result_bytes = (folder / "result.json").read_bytes()
    first = recording.log_folder(folder, None, "twice", None)
    second = recording.log_folder(folder, None, "twice", None)

    assert (first.already_logged, second.already_logged) == (False, True)
    assert second.run_id == first.run_id
    assert [r.info.run_id for r in all_runs()] == [first.run_id]
    record = json.loads((folder / "mlflow_run.json").read_text())
    assert set(record) == {"run_id", "experiment_id", "tracking_uri", "logged_at"}
    assert record["run_id"] == first.run_id
    experiment = MlflowClient().get_experiment_by_name("twice")
    assert experiment is not None and record["experiment_id"] == experiment.experiment_id
    assert record["tracking_uri"] == isolated_mlflow
    assert datetime.fromisoformat(record["logged_at"]).tzinfo is not None
    assert (folder / "result.json").read_bytes() == result_bytes


def test_found_by_tag_without_a_record(folder: Path) -> None:
    first = recording.log_folder(folder, None, None, None)
    (folder / "mlflow_run.json").unlink()
    again = recording.log_folder(folder, None, "elsewhere", None)
    assert again.already_logged and again.run_id == first.run_id
    assert len(all_runs()) == 1
    record = artifacts.read_run_record(folder)
    assert record is not None and record["run_id"] == first.run_id


def test_a_failed_run_is_retired_and_a_new_one_made(folder: Path, sample_result: Sample) -> None:
    result, _ = sample_result
    client = MlflowClient()
    failed = client.create_run(
        client.create_experiment("half"), tags={"llem.experiment_id": result.experiment_id}
    )
    client.set_terminated(failed.info.run_id, status="FAILED")

    logged = recording.log_folder(folder, None, "half", None)

    assert not logged.already_logged and logged.run_id != failed.info.run_id
    statuses = {r.info.run_id: r.info.status for r in all_runs()}
    assert statuses == {logged.run_id: "FINISHED"}  # one run per result (issue 17)
    retired = client.get_run(failed.info.run_id)
    assert retired.info.lifecycle_stage == "deleted" and "llem.retired" in retired.data.tags


def test_record_of_another_store_does_not_stop_logging_here(folder: Path, tmp_path: Path) -> None:
    other = f"sqlite:///{tmp_path / 'other.db'}"
    first = recording.log_folder(folder, other, None, None)
    here = recording.log_folder(folder, None, None, None)
    assert not here.already_logged and here.run_id != first.run_id
    record = artifacts.read_run_record(folder)
    assert record is not None and record["run_id"] == here.run_id
    assert MlflowClient(tracking_uri=other).get_run(first.run_id).info.status == "FINISHED"


def test_unreachable_store_fails_in_one_line_plus_the_hint(folder: Path) -> None:
    with pytest.raises(TrackingError) as info:
        recording.log_folder(folder, f"http://127.0.0.1:{free_port()}", None, None)
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[1] == f"The result is saved in {folder}; log it later with: llem-mlflow log {folder}"
    assert not (folder / "mlflow_run.json").exists()


def test_run_record_round_trip_scrubs_credentials(tmp_path: Path) -> None:
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    path = artifacts.write_run_record(
        tmp_path, run_id="r1", experiment_id="7", tracking_uri="https://u:secret@host/x", logged_at=when
    )
    assert path == tmp_path / "mlflow_run.json"
    assert "secret" not in path.read_text()
    assert artifacts.read_run_record(tmp_path) == {
        "run_id": "r1",
        "experiment_id": "7",
        "tracking_uri": "https://host/x",
        "logged_at": "2026-01-01T00:00:00+00:00",
    }
    path.write_text("{not json")
    assert artifacts.read_run_record(tmp_path) is None
