"""result.json and the Parquet power trace on real files: atomicity, round trips, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from llem_mlflow.errors import TrackingError
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult

Sample = tuple[ExperimentResult, PowerTrace]


def _windows(result: ExperimentResult) -> dict[str, tuple[float, float]]:
    return {k: (w.start_s, w.end_s) for k, w in result.windows.items()}


def test_result_dir_creates_nested_folder(tmp_path: Path) -> None:
    out = artifacts.result_dir(tmp_path / "results" / "deeper", "exp-1")
    assert out == tmp_path / "results" / "deeper" / "exp-1"
    assert out.is_dir()


def test_result_dir_refuses_even_an_empty_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "exp-1").mkdir()  # another process may have claimed it a moment ago
    with pytest.raises(artifacts.FolderTaken, match="already exists"):
        artifacts.result_dir(tmp_path, "exp-1")


def test_a_taken_name_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    (tmp_path / "exp-1").mkdir()
    names = iter(["exp-1", "exp-1", "exp-2"])
    folder, name = artifacts.claim_result_dir(tmp_path, lambda: next(names))
    assert (folder, name) == (tmp_path / "exp-2", "exp-2")
    with pytest.raises(artifacts.FolderTaken):
        artifacts.claim_result_dir(tmp_path, lambda: "exp-1", attempts=3)


def test_result_dir_refuses_non_empty_folder(tmp_path: Path) -> None:
    old = tmp_path / "exp-1"
    old.mkdir()
    (old / "result.json").write_text("old data")
    with pytest.raises(TrackingError, match="already exists"):
        artifacts.result_dir(tmp_path, "exp-1")
    assert (old / "result.json").read_text() == "old data"


def test_result_json_round_trip_leaves_no_temp_files(tmp_path: Path, sample_result: Sample) -> None:
    result, _ = sample_result
    path = artifacts.write_result_json(result, tmp_path)
    assert path == tmp_path / "result.json"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert artifacts.read_result_json(path) == result
    assert json.loads(path.read_text())["schema_version"] == "2.0"


def test_result_json_overwrite_is_whole_file(tmp_path: Path, sample_result: Sample) -> None:
    result, _ = sample_result
    (tmp_path / "result.json").write_text("x" * 100_000)
    path = artifacts.write_result_json(result, tmp_path)
    assert artifacts.read_result_json(path) == result


def test_failed_write_cleans_temp_file_and_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("previous")

    def boom(f: object) -> None:
        raise OSError("disk full")

    with pytest.raises(TrackingError, match="disk full"):
        artifacts.atomic_write(target, boom)
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert target.read_text() == "previous"


def test_read_result_json_rejects_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "result.json"
    bad.write_text(json.dumps({"schema_version": "1.0"}))
    with pytest.raises(TrackingError, match="not a valid llem result"):
        artifacts.read_result_json(bad)


def test_trace_parquet_round_trip(tmp_path: Path, sample_result: Sample) -> None:
    result, trace = sample_result
    path = artifacts.write_trace_parquet(trace, tmp_path, _windows(result))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert artifacts.read_trace_parquet(path) == trace
    stored = json.loads(pq.read_schema(path).metadata[b"llem.windows"])  # for readers of the file alone
    assert stored == {name: list(span) for name, span in _windows(result).items()}


def test_trace_parquet_schema_and_phases(tmp_path: Path, sample_result: Sample) -> None:
    result, trace = sample_result
    table = pq.read_table(artifacts.write_trace_parquet(trace, tmp_path, _windows(result)))
    types = {f.name: str(f.type) for f in table.schema}
    assert types == {
        "timestamp_s": "double",
        "gpu": "int32",
        "power_w": "double",
        "temperature_c": "double",
        "sm_clock_mhz": "double",
        "utilization_pct": "double",
        "memory_used_b": "int64",
        "throttle_reasons": "int64",
        "compute_processes": "int32",
        "phase": "string",
    }
    assert table.num_rows == len(trace.samples)
    phases = table.column("phase").to_pylist()
    assert set(phases) == {"idle", "measure", "other"}
    measure = [s for s, p in zip(trace.samples, phases, strict=True) if p == "measure"]
    assert all(
        result.windows["measure"].start_s <= s.timestamp_s <= result.windows["measure"].end_s for s in measure
    )
    assert float(table.schema.metadata[b"llem.interval_s"]) == trace.interval_s


def test_empty_trace_writes_valid_zero_row_file(tmp_path: Path) -> None:
    path = artifacts.write_trace_parquet(PowerTrace(interval_s=0.015), tmp_path, {})
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert "power_w" in table.column_names and "phase" in table.column_names
    assert artifacts.read_trace_parquet(path) == PowerTrace(interval_s=0.015, samples=[])


def test_read_trace_rejects_foreign_parquet(tmp_path: Path) -> None:
    import pyarrow as pa

    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with pytest.raises(TrackingError, match="not an llem power trace"):
        artifacts.read_trace_parquet(path)


def test_sample_without_optional_fields_round_trips(tmp_path: Path) -> None:
    trace = PowerTrace(interval_s=0.5, samples=[TraceSample(timestamp_s=1.5, gpu=3, power_w=99.0)])
    path = artifacts.write_trace_parquet(trace, tmp_path, {"measure": (0.0, 1.0)})
    assert artifacts.read_trace_parquet(path) == trace
    assert pq.read_table(path).column("phase").to_pylist() == ["other"]


def _process_trace() -> PowerTrace:
    counts = [None, 0, 1, 2, None]
    samples = [
        TraceSample(timestamp_s=float(i), gpu=0, power_w=100.0, compute_processes=c)
        for i, c in enumerate(counts)
    ]
    return PowerTrace(interval_s=1.0, samples=samples)


def test_compute_processes_column_round_trips_with_nulls(tmp_path: Path) -> None:
    trace = _process_trace()
    path = artifacts.write_trace_parquet(trace, tmp_path, {"measure": (1.0, 3.0)})
    assert pq.read_table(path).column("compute_processes").to_pylist() == [None, 0, 1, 2, None]
    assert artifacts.read_trace_parquet(path) == trace


def test_trace_written_before_compute_processes_still_loads(tmp_path: Path) -> None:
    path = artifacts.write_trace_parquet(_process_trace(), tmp_path, {"measure": (1.0, 3.0)})
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["compute_processes"]), path)  # keeps the schema metadata
    old = artifacts.read_trace_parquet(path)
    assert [s.compute_processes for s in old.samples] == [None] * 5
    assert [s.power_w for s in old.samples] == [100.0] * 5 and old.interval_s == 1.0


@pytest.mark.parametrize("name", ["h200_gpt2", "h200_gpt2_bs8", "h200_gpt2_bs16"])
def test_committed_fixture_traces_without_compute_processes_load(name: str) -> None:
    path = Path(__file__).resolve().parents[1] / "fixtures" / name / "timeseries.parquet"
    assert "compute_processes" not in pq.read_schema(path).names  # written before the column existed
    trace = artifacts.read_trace_parquet(path)
    assert trace.samples and all(s.compute_processes is None for s in trace.samples)


def test_read_trace_still_requires_the_original_columns(tmp_path: Path) -> None:
    path = artifacts.write_trace_parquet(_process_trace(), tmp_path, {})
    pq.write_table(pq.read_table(path).drop_columns(["throttle_reasons"]), path)
    with pytest.raises(TrackingError, match="throttle_reasons"):
        artifacts.read_trace_parquet(path)


def test_written_files_follow_the_umask(tmp_path: Path, cpu_result: ExperimentResult) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = artifacts.write_result_json(cpu_result, tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
