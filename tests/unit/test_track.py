"""``track``: counter energy of any block at synced edges, with a trace, logged on exit, never lost."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pytest

from llem_mlflow.protocols import GpuDevice
from llem_mlflow.track import Tracked, track
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


def test_as_a_decorator_each_call_is_its_own_measurement() -> None:
    logged: list[Tracked] = []
    gpu = FakeDevice(0, energy_script=[0.0, 2.0, 10.0, 15.0])

    @track("step", open_gpus=_gpus(gpu), sync=lambda: None, logger=logged.append)
    def step(x: int) -> int:
        return x * 2

    assert step(2) == 4 and step(3) == 6
    assert [t.energy_j for t in logged] == [{0: 2.0}, {0: 5.0}]


def test_a_logging_failure_does_not_break_the_block() -> None:
    def broken(t: Tracked) -> None:
        raise RuntimeError("store down")

    with track(
        "x", open_gpus=_gpus(FakeDevice(0, energy_script=[0.0, 1.0])), sync=lambda: None, logger=broken
    ):
        pass


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
