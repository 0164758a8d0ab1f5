"""steady_state reads the counters at every batch edge inside the window: their cost is in the result.

Each read of a fake GPU advances a fake clock by a known time (``measure.READ_TIMER`` reads that
clock), so the reported seconds are exact without timing anything real.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from llem_mlflow.cli.summary import summary
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure import cycle
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.results import files as artifacts
from llem_mlflow.run.execute import GpuSet, Outcome, execute
from tests.fakes import FakeBackend, FakeDevice

READ_S = 0.004  # what one fake counter read costs on the fake clock


class ReadClock:
    """A clock that only counter reads move."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def counter(self) -> float:
        """One GPU's energy counter read: takes READ_S on this clock; the counter climbs 10 J a read."""
        self.now += READ_S
        return self.now / READ_S * 10.0


def _cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    base = dict(
        n=10, batch_size=2, max_input_tokens=4, max_output_tokens=3, baseline_s=0.0, cycles=2,
        output_dir=str(tmp_path / "out"), mlflow=False, sampling_interval_s=0.005,
    )  # fmt: skip
    return ExperimentConfig.model_validate({**base, **kw})


def _run(tmp_path: Path, methodology: str, clock: ReadClock) -> tuple[Outcome, list[FakeDevice]]:
    devices = [
        FakeDevice(cuda_index=i, uuid=f"GPU-fake-{i}", energy_script=clock.counter, power_w=150.0)
        for i in (0, 1)
    ]
    cuda = [CudaDeviceId(cuda_index=i, uuid=f"GPU-fake-{i}", pci_bus_id=None) for i in (0, 1)]
    backend = FakeBackend(device="cuda", cuda_devices=cuda)
    cfg = _cfg(tmp_path, measurement_methodology=methodology)
    gpus = lambda ids: GpuSet(devices, "580")  # noqa: E731
    return execute(cfg, backend=backend, gpus=gpus, store_probe=lambda c: None), devices


def test_steady_state_reports_the_count_seconds_and_share_of_its_in_window_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ReadClock()
    monkeypatch.setattr(cycle, "READ_TIMER", clock, raising=False)  # raising: for the old code
    outcome, devices = _run(tmp_path, "steady_state", clock)
    # 5 batches per cycle: 4 inner batch edges, each a read of 2 GPUs; the edges of the window are not inside
    assert [d.energy_reads for d in devices] == [2 * (2 + 4)] * 2
    r = artifacts.read_result_json(outcome.result_dir / "result.json")
    st = r.steady_state
    assert st is not None
    assert st.in_window_reads == [4, 4]
    assert st.in_window_read_s == pytest.approx([4 * 2 * READ_S] * 2)
    assert st.in_window_read_pct == pytest.approx([0.032 / w * 100 for w in st.full_window_s])
    assert "counter reads inside the windows: 8 in 64.0 ms" in summary(outcome)


def test_total_reads_no_counter_inside_the_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ReadClock()
    ticks = itertools.count()
    monkeypatch.setattr(cycle, "READ_TIMER", lambda: float(next(ticks)), raising=False)  # any timed read
    outcome, devices = _run(tmp_path, "total", clock)
    assert [d.energy_reads for d in devices] == [2 * 2] * 2  # the window's two edges, per cycle
    assert outcome.result.steady_state is None
    assert next(ticks) == 0  # no in-window mark was timed
