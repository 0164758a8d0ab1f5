"""Sweeps tell the truth about what they did: ``compare.png`` on the parent (energy, or tok/s and latency
on CPU; drawn from the points that have results, also after a resume; a drawing failure only warns), a
resumed summary keeps the first attempt's figures, and "loading" is said only when a model loads."""

from __future__ import annotations

import csv
import itertools
import logging
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeBackend, FakeDevice
from mlflow.tracking import MlflowClient

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.results import plots
from llem_mlflow.run.execute import GpuSet
from llem_mlflow.sweep import execute as sweep
from tests.unit.test_sweep import Backends, _children, _fail, _file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COMPARE_PNG = "compare.png"
CPU_PANELS = ("output tokens / s", "TTFT p50 (ms)", "ITL p50 (ms)")  # energy not measured
GPU_PANELS = ("J per output token", "output tokens / s")
CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)


def _parent_png(run_id: str, tmp_path: Path) -> tuple[int, int]:
    """Download the parent's compare.png; (width, height) after checking it is a real PNG."""
    client = MlflowClient()
    assert COMPARE_PNG in {a.path for a in client.list_artifacts(run_id)}
    local = Path(client.download_artifacts(run_id, COMPARE_PNG, str(tmp_path)))
    data = local.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000, f"compare.png is {len(data)} bytes"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _summary(outcome: sweep.SweepOutcome) -> dict[str, dict[str, str]]:
    with outcome.summary_files[0].open() as f:
        return {row["point"]: row for row in csv.DictReader(f)}


# ---------------------------------------------------------------- compare.png on the parent


def test_a_cpu_sweep_logs_compare_png_with_throughput_and_latency_panels(tmp_path: Path) -> None:
    outcome = sweep.run_sweep(_file(tmp_path, {"batch_size": [1, 2, 4, 0]}), Backends().parts())

    assert outcome.parent_run_id is not None
    width, height = _parent_png(outcome.parent_run_id, tmp_path / "dl")
    assert width > 2 * height  # three panels side by side
    figure = outcome.figure
    assert figure is not None and figure.field == "batch_size"
    assert figure.panels == tuple((title, 3) for title in CPU_PANELS)  # 3 measured points, 1 invalid
    assert figure.path == outcome.summary_files[0].parent / COMPARE_PNG
    assert [f.name for f in outcome.summary_files] == [sweep.SUMMARY_CSV, sweep.SUMMARY_MD]


def test_a_gpu_sweep_draws_j_per_token_and_throughput(tmp_path: Path) -> None:
    counter = itertools.count(0.0, 50.0)  # joules: grows at every read
    device = FakeDevice(energy_script=lambda: next(counter), power_w=150.0)
    parts = sweep.Parts(
        make_backend=lambda cfg: FakeBackend(device="cuda", cuda_devices=[CUDA0]),
        free_memory=lambda: None,
        store_probe=lambda c: None,
        gpus=lambda ids: GpuSet([device], "580"),
    )
    outcome = sweep.run_sweep(_file(tmp_path, {"batch_size": [1, 2]}, sampling_interval_s=0.005), parts)

    assert all(r.metrics.get("energy/per_output_token_j") for r in outcome.rows)
    assert outcome.parent_run_id is not None
    _parent_png(outcome.parent_run_id, tmp_path / "dl")
    assert outcome.figure is not None
    assert outcome.figure.panels == tuple((title, 2) for title in GPU_PANELS)


def test_the_figure_is_drawn_from_the_points_that_have_results(tmp_path: Path) -> None:
    class Broken(Backends):
        def make(self, cfg: ExperimentConfig) -> FakeBackend:
            backend = super().make(cfg)
            backend.on_generate = lambda: _fail() if backend.generate_calls[-1][0] == 2 else None
            return backend

    path = _file(tmp_path, {"batch_size": [1, 2, 4]})
    outcome = sweep.run_sweep(path, Broken().parts())

    status = {r.point.label: r.status for r in outcome.rows}
    assert status == {
        '{"batch_size":1}': "measured",
        '{"batch_size":2}': "failed",
        '{"batch_size":4}': "measured",
    }
    assert outcome.parent_run_id is not None
    assert MlflowClient().get_run(outcome.parent_run_id).info.status == "FAILED"
    _parent_png(outcome.parent_run_id, tmp_path / "dl")
    assert outcome.figure is not None and outcome.figure.field == "batch_size"
    assert outcome.figure.panels == tuple((title, 2) for title in CPU_PANELS)


def test_a_resumed_sweep_draws_every_point_from_its_runs(tmp_path: Path) -> None:
    path = _file(tmp_path, {"batch_size": [1, 2, 4]})
    first = sweep.run_sweep(path, Backends().parts())
    assert first.parent_run_id is not None
    client = MlflowClient()
    victim = _children(client, first.parent_run_id)[0]
    client.set_terminated(victim.info.run_id, status="FAILED")  # as if that point had crashed
    folders = [d for d in (tmp_path / "out").iterdir() if (d / "result.json").is_file()]
    assert len(folders) == 3
    for folder in folders:  # no local results: the earlier points' results come from their runs
        shutil.rmtree(folder)

    again = sweep.run_sweep(path, Backends().parts())

    assert sorted(r.status for r in again.rows) == ["done earlier", "done earlier", "measured"]
    _parent_png(first.parent_run_id, tmp_path / "dl")
    assert again.figure is not None
    assert again.figure.panels == tuple((title, 3) for title in CPU_PANELS)


def test_a_figure_that_cannot_be_drawn_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("no font")

    monkeypatch.setattr(plots, "draw_compare", broken, raising=False)
    with caplog.at_level(logging.WARNING, logger="llem_mlflow"):
        outcome = sweep.run_sweep(_file(tmp_path, {"batch_size": [1, 2]}), Backends().parts())

    assert outcome.parent_run_id is not None and not outcome.failed
    parent = MlflowClient().get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert {a.path for a in MlflowClient().list_artifacts(outcome.parent_run_id)} == {
        sweep.SUMMARY_CSV,
        sweep.SUMMARY_MD,
    }
    assert "compare.png not drawn: RuntimeError: no font" in caplog.text
    assert outcome.figure is None


# ---------------------------------------------------------------- a resumed summary


def test_a_resumed_summary_keeps_the_first_attempts_figures(tmp_path: Path) -> None:
    path = _file(tmp_path, {"batch_size": [1, 2, 4]})
    first = sweep.run_sweep(path, Backends().parts())
    before = _summary(first)
    assert {row["status"] for row in before.values()} == {"measured"}

    again = sweep.run_sweep(path, Backends().parts())
    after = _summary(again)

    figures = [*sweep.METRIC_COLUMNS, "run_id", "config_hash"]
    assert before.keys() == after.keys()
    for point, row in after.items():
        assert row["status"] == "done earlier"
        assert row["tok_per_s"] and row["ttft_p50_s"]  # real figures, not blanks
        assert {k: row[k] for k in figures} == {k: before[point][k] for k in figures}
        assert row["note"].startswith("figures of the earlier attempt (ended ")
    table = again.summary_files[1].read_text()
    assert table.count("done earlier: figures of the earlier attempt") == 3
    logged = MlflowClient().download_artifacts(again.parent_run_id or "", sweep.SUMMARY_CSV, str(tmp_path))
    assert Path(logged).read_text() == again.summary_files[0].read_text()


# ---------------------------------------------------------------- "loading" only when it loads


class Stages:
    """A Progress that records the stage messages."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def stage(self, message: str) -> None:
        self.messages.append(message)

    def batch(self, phase: str, done: int, total: int) -> None:
        pass


def test_loading_is_said_once_per_loaded_model(tmp_path: Path) -> None:
    stages = Stages()
    backends = Backends()
    parts = sweep.Parts(
        make_backend=backends.make, free_memory=backends.free, store_probe=lambda c: None, progress=stages
    )
    path = _file(tmp_path, {"precision": ["fp32", "fp16"], "batch_size": [1, 2, 4]})
    outcome = sweep.run_sweep(path, parts)

    assert [r.status for r in outcome.rows] == ["measured"] * 6
    said = [m.split(" ")[0] for m in stages.messages if m.startswith(("loading ", "reusing "))]
    assert said == ["loading", "reusing", "reusing"] * 2  # a group of 3 points per precision
    assert len(backends.built) == 2 and [b.load_calls for b in backends.built] == [1, 1]
    assert sum(m.startswith("reusing loaded gpt2") for m in stages.messages) == 4
