"""``--gpus``: sweep points in parallel, one spawned worker per GPU (fakes in the workers, real sqlite)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import parallel_fakes
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from llem_mlflow.cli.app import app
from llem_mlflow.errors import ConfigError
from llem_mlflow.sweep import execute as sweep
from llem_mlflow.sweep import parallel as sweep_parallel
from llem_mlflow.tracking.client import PARENT_RUN_TAG
from tests.unit.test_sweep import BASE, _file


def _parts(gpus: tuple[str, ...]) -> sweep.Parts:
    return sweep.Parts(gpu_ids=gpus, worker_parts=parallel_fakes.worker_parts, store_probe=lambda c: None)


def _children(parent_id: str) -> list[Any]:
    client = MlflowClient()
    exp = client.get_experiment_by_name("sweeps")
    assert exp is not None
    return list(client.search_runs([exp.experiment_id], f"tags.`{PARENT_RUN_TAG}` = '{parent_id}'"))


# ---------------------------------------------------------------- --gpus: parsing and checks


def test_gpu_ids_parse_and_map_through_the_callers_visible_devices() -> None:
    assert sweep_parallel.parse_gpu_ids("0, 1") == [0, 1]
    assert sweep_parallel.gpu_targets([0, 1], None, 2) == ["0", "1"]
    assert sweep_parallel.gpu_targets([1], "4,6", 8) == ["6"]  # index into CUDA_VISIBLE_DEVICES
    assert sweep_parallel.gpu_targets([0], "GPU-abc", 8) == ["GPU-abc"]


@pytest.mark.parametrize(
    ("text", "visible", "count", "says"),
    [
        ("0,a", None, 2, "indices"),
        ("-1", None, 2, "indices"),
        ("0,0", None, 2, "twice"),
        ("0,2", None, 2, "no GPU 2; NVML shows 2"),
        ("1", "3", 8, "no GPU 1; CUDA_VISIBLE_DEVICES=3 shows 1"),
    ],
)
def test_bad_gpu_lists_are_config_errors_that_say_why(
    text: str, visible: str | None, count: int, says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        sweep_parallel.gpu_targets(sweep_parallel.parse_gpu_ids(text), visible, count)


def test_without_nvml_gpus_is_refused_before_anything_runs(tmp_path: Path) -> None:
    class NoNvml:
        class NVMLError(Exception):  # noqa: N818 - NVML's spelling
            pass

        def nvmlInit(self) -> None:  # noqa: N802 - NVML's spelling
            raise self.NVMLError("NVML Shared Library Not Found")

    with pytest.raises(ConfigError, match="--gpus runs points on NVIDIA GPUs"):
        sweep_parallel.resolve_gpus("0,1", nvml=NoNvml())


def test_the_cli_refuses_gpus_here_with_exit_2_and_no_run(tmp_path: Path) -> None:
    path = _file(tmp_path, {"batch_size": [1, 2]})
    result = CliRunner().invoke(app, ["sweep", str(path), "--gpus", "0,1"])
    assert result.exit_code == 2
    assert "--gpus" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    bad = CliRunner().invoke(app, ["sweep", str(path), "--gpus", "zero"])
    assert bad.exit_code == 2 and "e.g. --gpus 0,1" in bad.output


def test_a_cpu_point_is_refused_with_gpus(tmp_path: Path) -> None:
    plan = sweep.plan_sweep({**BASE, "sweep": {"device": ["cuda", "cpu"]}})
    with pytest.raises(ConfigError, match='point {"device":"cpu"} runs on device cpu'):
        sweep.run_sweep(plan, _parts(("0", "1")))


# ---------------------------------------------------------------- whole parallel sweeps (spawned workers)


def test_points_run_at_once_one_worker_per_gpu_and_a_rerun_adds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    monkeypatch.setenv("FAKE_BARRIER", str(barrier))
    monkeypatch.setenv("FAKE_WORKERS", "2")
    path = _file(tmp_path, {"batch_size": [1, 2, 4, 0]})

    outcome = sweep.run_sweep(path, _parts(("0", "1")))

    assert sorted((p.name, p.read_text()) for p in barrier.glob("met-*")) == [
        ("met-0", "yes"),
        ("met-1", "yes"),
    ]
    assert sorted(r.status for r in outcome.rows) == ["invalid", "measured", "measured", "measured"]
    assert outcome.parent_run_id is not None
    children = _children(outcome.parent_run_id)
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags[sweep_parallel.GPU_TAG] for c in children} == {"0", "1"}
    assert all(c.data.metrics["tokens/output"] == 12 for c in children)
    by_run = {r.run_id: r for r in outcome.rows if r.run_id}
    assert {c.info.run_id for c in children} == set(by_run)  # the rows name the logged runs
    for c in children:
        assert json.loads(c.data.tags["llem.sweep.point"]) == json.loads(by_run[c.info.run_id].point.label)
    assert MlflowClient().get_run(outcome.parent_run_id).info.status == "FINISHED"
    assert _figure_points(outcome) == [3, 3, 3]  # compare.png on the parent: tok/s, TTFT, ITL

    again = sweep.run_sweep(path, _parts(("0", "1")))
    assert sorted(r.status for r in again.rows) == ["done earlier"] * 3 + ["invalid"]
    assert len(_children(outcome.parent_run_id)) == 3
    assert _figure_points(again) == [3, 3, 3]


def test_a_point_that_raises_or_kills_its_worker_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RAISE_AT_BATCH", "2")
    monkeypatch.setenv("FAKE_DIE_AT_BATCH", "4")
    path = _file(tmp_path, {"batch_size": [1, 2, 4, 8]}, n=8)  # every batch is full

    outcome = sweep.run_sweep(path, _parts(("0", "1")))

    rows = {json.loads(r.point.label)["batch_size"]: r for r in outcome.rows}
    assert rows[2].status == "failed" and "RuntimeError: CUDA out of memory (fake)" in rows[2].note
    assert rows[4].status == "failed" and "exited (code 3) while measuring it" in rows[4].note
    assert rows[1].status == rows[8].status == "measured"  # the surviving worker took the rest
    assert outcome.parent_run_id is not None
    assert MlflowClient().get_run(outcome.parent_run_id).info.status == "FAILED"
    assert _figure_points(outcome) == [2, 2, 2]  # drawn from the two points that have results


def _figure_points(outcome: sweep.SweepOutcome) -> list[int]:
    """Points in each panel of the sweep's compare.png, after checking the parent run holds it."""
    assert outcome.parent_run_id is not None
    assert "compare.png" in {a.path for a in MlflowClient().list_artifacts(outcome.parent_run_id)}
    assert outcome.figure is not None
    return [points for _, points in outcome.figure.panels]
