"""``track``: counter energy of any block at synced edges, with a trace, logged on exit, never lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from llem_mlflow.errors import DeviceError
from llem_mlflow.protocols import GpuDevice
from llem_mlflow.run.track import Tracked, track
from tests.fakes import FakeDevice


def _gpus(
    *devices: FakeDevice,
) -> Callable[[Sequence[int] | None], tuple[list[GpuDevice], Callable[[], None], None]]:
    closed: list[bool] = []

    def open_gpus(gpus: Sequence[int] | None) -> tuple[list[GpuDevice], Callable[[], None], None]:
        return (
            [d for d in devices if gpus is None or d.info.cuda_index in gpus],
            lambda: closed.append(True),
            None,
        )

    open_gpus.closed = closed  # type: ignore[attr-defined]
    return open_gpus


def test_a_block_is_measured_between_synced_counter_reads_and_logged() -> None:
    gpu0 = FakeDevice(0, energy_script=[100.0, 130.0], power_w=200.0)
    gpu1 = FakeDevice(1, uuid="GPU-fake-1", energy_script=[50.0, 60.0], power_w=100.0)
    logged: list[Tracked] = []
    syncs: list[float] = []
    opened = _gpus(gpu0, gpu1)
    with track("epoch", open_gpus=opened, sync=lambda: syncs.append(time.time()), logger=logged.append,
               sampling_interval_s=0.005) as t:  # fmt: skip
        time.sleep(0.05)
    assert logged == [t] and t.energy_j == {0: 30.0, 1: 10.0} and t.total_energy_j == 40.0
    assert 0.05 <= t.duration_s < 1.0 and t.avg_power_w == pytest.approx(40.0 / t.duration_s)
    assert len(syncs) == 2 and syncs[0] <= t.start_s and syncs[1] <= t.end_s
    assert t.trace is not None and t.trace.gpus() == [0, 1] and len(t.trace.for_gpu(0)) >= 2
    assert opened.closed == [True]  # type: ignore[attr-defined]
    assert not t.failed


def test_only_the_named_gpus_are_measured() -> None:
    gpu0 = FakeDevice(0, energy_script=[0.0, 1.0])
    gpu1 = FakeDevice(1, uuid="GPU-fake-1", energy_script=[])  # reading it would exhaust the script
    with track("one", gpus=[0], open_gpus=_gpus(gpu0, gpu1), sync=lambda: None, logger=lambda t: None) as t:
        pass
    assert t.energy_j == {0: 1.0} and gpu1.energy_reads == 0


def test_a_failing_block_still_logs_what_was_measured_and_raises() -> None:
    logged: list[Tracked] = []
    gpu = FakeDevice(0, energy_script=[0.0, 7.0])
    with (
        pytest.raises(KeyError),
        track("boom", open_gpus=_gpus(gpu), sync=lambda: None, logger=logged.append),
    ):
        raise KeyError("x")
    assert logged[0].failed and logged[0].energy_j == {0: 7.0}


def test_without_nvml_time_is_measured_and_energy_is_null() -> None:
    logged: list[Tracked] = []

    def no_nvml(gpus: Sequence[int] | None) -> tuple[list[GpuDevice], Callable[[], None], str]:
        return [], lambda: None, "energy not measured: no NVIDIA driver"

    with track("cpu", open_gpus=no_nvml, sync=lambda: None, logger=logged.append) as t:
        time.sleep(0.01)
    assert t.energy_j is None and t.avg_power_w is None and t.duration_s >= 0.01
    assert t.warnings == ["energy not measured: no NVIDIA driver"] and logged == [t]
    assert t.status == "ok" and t.energy_note == "not measured: no NVIDIA driver"


def test_as_a_decorator_each_call_is_its_own_measurement() -> None:
    logged: list[Tracked] = []
    gpu = FakeDevice(0, energy_script=[0.0, 2.0, 10.0, 15.0])

    @track("step", open_gpus=_gpus(gpu), sync=lambda: None, logger=logged.append)
    def step(x: int) -> int:
        return x * 2

    assert step(2) == 4 and step(3) == 6
    assert [t.energy_j for t in logged] == [{0: 2.0}, {0: 5.0}]


def test_a_logging_failure_does_not_break_the_block(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[Tracked] = []

    def broken(t: Tracked) -> None:
        calls.append(t)
        raise RuntimeError("store down")

    ran: list[bool] = []
    with track(
        "x", open_gpus=_gpus(FakeDevice(0, energy_script=[0.0, 1.0])), sync=lambda: None, logger=broken
    ) as t:
        ran.append(True)
    assert ran == [True] and calls == [t] and t.energy_j == {0: 1.0} and not t.failed
    assert any("logging to MLflow failed: store down" in r.getMessage() for r in caplog.records)


def test_a_name_is_required() -> None:
    with pytest.raises(ValueError, match="name"):
        track("  ")


def test_logged_into_the_active_run_or_a_new_one() -> None:
    import mlflow  # the store: the test's own sqlite file (conftest's isolated_mlflow)
    from mlflow.tracking import MlflowClient

    gpu = FakeDevice(0, energy_script=[0.0, 12.0, 20.0, 23.0], power_w=150.0)
    opened = _gpus(gpu)
    with (
        mlflow.start_run() as run,
        track("epoch", open_gpus=opened, sync=lambda: None, sampling_interval_s=0.005),
    ):
        time.sleep(0.02)
    data = MlflowClient().get_run(run.info.run_id).data
    assert data.metrics["track/epoch/energy_j"] == 12.0 and data.metrics["track/epoch/gpu0_j"] == 12.0
    assert data.metrics["track/epoch/duration_s"] >= 0.02 and data.tags["track/epoch/status"] == "ok"
    history = MlflowClient().get_metric_history(run.info.run_id, "track/epoch/power/gpu0_w")
    assert len(history) >= 2 and {m.value for m in history} == {150.0}
    with track("solo", open_gpus=_gpus(gpu), sync=lambda: None):
        pass
    (solo,) = mlflow.search_runs(filter_string="tags.mlflow.runName = 'solo'", output_format="list")
    assert solo.data.metrics["track/solo/energy_j"] == 3.0 and solo.info.status == "FINISHED"
    assert mlflow.active_run() is None


UNKNOWN = DeviceError("Reading the energy counter of GPU 0 (Fake GPU) failed: Unknown Error.")


def _samplers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "llem-power-sampler" and t.is_alive()]


def test_a_failing_start_read_leaks_nothing_runs_the_block_and_nulls_energy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = _samplers()
    gpu = FakeDevice(0, energy_script=[UNKNOWN, UNKNOWN, UNKNOWN, 50.0], power_w=120.0)
    opened, logged, ran = _gpus(gpu), [], []
    with track("start-fault", open_gpus=opened, sync=lambda: None, logger=logged.append,
               sampling_interval_s=0.005) as t:  # fmt: skip
        ran.append(True)
    assert ran == [True] and logged == [t] and not t.failed
    assert _samplers() == before  # the sampler thread was stopped
    assert opened.closed == [True]  # type: ignore[attr-defined]  # NVML shut down exactly once
    assert t.energy_j == {0: None} and t.total_energy_j is None and t.avg_power_w is None
    assert t.status == "energy_incomplete" and "start edge" in (t.energy_note or "")
    assert any("GPU 0" in w and "its energy is null" in w for w in t.warnings)
    assert any("its energy is null" in r.getMessage() for r in caplog.records)  # printed, not only kept


def test_a_failing_end_read_does_not_replace_the_blocks_own_exception() -> None:
    error = ValueError("the user's own error")
    gpu = FakeDevice(0, energy_script=[10.0, UNKNOWN, UNKNOWN, UNKNOWN])
    opened, logged = _gpus(gpu), []
    with pytest.raises(ValueError) as caught, track("end-fault", open_gpus=opened, sync=lambda: None,
                                                     logger=logged.append):  # fmt: skip
        raise error
    assert caught.value is error
    (t,) = logged
    assert t.failed and t.status == "failed" and t.energy_j == {0: None} and t.total_energy_j is None
    assert "end edge" in (t.energy_note or "") and opened.closed == [True]  # type: ignore[attr-defined]


def test_a_failing_end_read_in_a_normal_block_raises_nothing_and_nulls_that_gpu() -> None:
    gpu0 = FakeDevice(0, energy_script=[10.0, UNKNOWN, UNKNOWN, UNKNOWN])
    gpu1 = FakeDevice(1, uuid="GPU-fake-1", energy_script=[5.0, 9.0])
    with track("end-fault", open_gpus=_gpus(gpu0, gpu1), sync=lambda: None, logger=lambda t: None) as t:
        pass
    assert t.energy_j == {0: None, 1: 4.0} and t.total_energy_j is None and t.status == "energy_incomplete"
    assert t.energy_note is not None and t.energy_note.startswith("incomplete: GPU 0")


def test_a_failing_sync_at_the_start_times_the_block_and_shuts_everything_down() -> None:
    before = _samplers()
    calls: list[int] = []

    def sync() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    gpu = FakeDevice(0, energy_script=[])  # never read: the measurement was abandoned
    opened, ran = _gpus(gpu), []
    with track("sync-fault", open_gpus=opened, sync=sync, logger=lambda t: None,
               sampling_interval_s=0.005) as t:  # fmt: skip
        ran.append(_samplers() == before)
        time.sleep(0.01)
    assert ran == [True] and opened.closed == [True]  # type: ignore[attr-defined]
    assert t.duration_s >= 0.01 and t.energy_j == {0: None} and t.status == "energy_incomplete"
    assert t.energy_note is not None and "illegal memory access" in t.energy_note


def _run_data(name: str) -> Any:
    import mlflow
    from mlflow.tracking import MlflowClient

    (run,) = mlflow.search_runs(filter_string=f"tags.mlflow.runName = '{name}'", output_format="list")
    return MlflowClient().get_run(run.info.run_id).data


def test_unknown_energy_is_visible_in_mlflow() -> None:
    gpu = FakeDevice(0, energy_script=[10.0, UNKNOWN, UNKNOWN, UNKNOWN])
    with track("faulty", open_gpus=_gpus(gpu), sync=lambda: None) as t:
        pass
    faulty = _run_data("faulty")
    assert faulty.tags["track/faulty/status"] == "energy_incomplete" and t.energy_note is not None
    assert faulty.tags["track/faulty/energy"] == t.energy_note and "end edge" in t.energy_note
    assert "track/faulty/energy_j" not in faulty.metrics and "track/faulty/gpu0_j" not in faulty.metrics
    assert "track/faulty/duration_s" in faulty.metrics


def test_on_cpu_mlflow_says_energy_was_not_measured(caplog: pytest.LogCaptureFixture) -> None:
    def no_nvml(gpus: Sequence[int] | None) -> tuple[list[GpuDevice], Callable[[], None], str]:
        return [], lambda: None, "energy not measured: no NVIDIA driver"

    with track("cpu", open_gpus=no_nvml, sync=lambda: None):
        pass
    cpu = _run_data("cpu")
    assert cpu.tags["track/cpu/energy"] == "not measured: no NVIDIA driver"
    assert cpu.tags["track/cpu/status"] == "ok" and "track/cpu/duration_s" in cpu.metrics
    assert "track/cpu/energy_j" not in cpu.metrics
    assert any("energy not measured: no NVIDIA driver" in r.getMessage() for r in caplog.records)
