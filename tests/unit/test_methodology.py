"""Steady-state trimming, idle settle and isolated prefill: the rules on fakes, then whole runs."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import pytest

from llem_mlflow.cli.summary import summary
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure import prefill, settle, steady
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.run.execute import GpuSet, Outcome, execute
from tests.fakes import FakeBackend, FakeDevice

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)


# ---------------------------------------------------------------- the steady-state rule


@pytest.mark.parametrize(
    ("powers", "ramp"),
    [
        ([150.0, 150.0, 150.0, 150.0], 0),  # already steady
        ([60.0, 150.0, 150.0, 150.0], 1),
        ([60.0, 100.0, 143.0, 150.0, 150.0], 2),  # 143 >= 0.95 x 150
        ([60.0, 60.0, 150.0, 150.0], 2),  # median 105: half the batches are ramp
        ([60.0, 60.0, 60.0, 150.0], 0),  # the median (60) is the steady level; 150 is an outlier
        ([60.0], 0),  # one batch: nothing to trim
        ([None, 150.0, 150.0], 0),  # unknown power stops the ramp
        ([None, None], 0),
        ([], 0),
    ],
)
def test_ramp_rule(powers: list[float | None], ramp: int) -> None:
    assert steady.ramp_batches(powers) == ramp


def test_batch_power_is_the_mean_trace_power_per_batch_summed_over_gpus() -> None:
    samples = [
        TraceSample(timestamp_s=t / 10, gpu=g, power_w=p)
        for t, p in enumerate([10, 20, 30, 40])
        for g in (0, 1)
    ]
    trace = PowerTrace(0.1, samples)
    # Samples at 0.0-0.3 s; batches start at 0.0 and 0.2, the window ends at 0.35: [0, 0.2) holds 10, 20;
    # [0.2, 0.35] holds 30, 40; each GPU has the same samples, so the sums double.
    assert steady.batch_power_w(trace, [0, 1], [0.0, 0.2], 0.35) == [30.0, 70.0]
    assert steady.batch_power_w(trace, [0, 2], [0.0, 0.2], 0.35) == [None, None]  # GPU 2 has no sample


# ---------------------------------------------------------------- idle settle


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_settle_waits_for_an_exponential_decay_to_flatten() -> None:
    clock = FakeClock()
    decay = settle.settle_idle(lambda: 79 + 46 * math.exp(-clock.now / 5), 120, clock, clock.sleep)
    assert decay.settled and 10 < decay.waited_s < 60
    assert decay.first_w is not None and decay.first_w > 110 and decay.last_w is not None
    assert abs(decay.last_w - 79) < 5  # close to the floor, not at the first flat-looking point


def test_settle_gives_up_at_the_cap_on_a_steady_drift() -> None:
    clock = FakeClock()
    drifting = settle.settle_idle(lambda: 200 - 2 * clock.now, 10, clock, clock.sleep)
    assert not drifting.settled and drifting.waited_s == pytest.approx(10, abs=0.11)


def test_settle_on_flat_power_takes_two_spans() -> None:
    clock = FakeClock()
    flat = settle.settle_idle(lambda: 80.0, 60, clock, clock.sleep)
    assert flat.settled and flat.waited_s == pytest.approx(2 * settle.SPAN_S, abs=0.11)


# ---------------------------------------------------------------- whole runs on fakes


def _cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    base = dict(
        n=6, batch_size=2, max_input_tokens=6, max_output_tokens=4, output_dir=str(tmp_path / "out"),
        mlflow=False, baseline_s=0.05, sampling_interval_s=0.002,
    )  # fmt: skip
    return ExperimentConfig.model_validate({**base, **kw})


def _run(cfg: ExperimentConfig, device: FakeDevice, backend: FakeBackend) -> Outcome:
    return execute(cfg, backend=backend, gpus=lambda ids: GpuSet([device], "580"), store_probe=lambda c: None)


def test_steady_state_trims_the_low_power_first_batch_and_reads_the_counter_from_there(
    tmp_path: Path,
) -> None:
    calls = itertools.count()
    power = {"w": 100.0}

    def on_generate() -> None:  # call 0: warm-up; 1: first measured batch (ramp, low power); then steady
        power["w"] = 60.0 if next(calls) == 1 else 150.0
        time.sleep(0.03)

    # Counter: idle 0 -> 5; cycle start 100, after batch 0: 110, after batch 1: 300, end 500.
    device = FakeDevice(energy_script=[0.0, 5.0, 100.0, 110.0, 300.0, 500.0], power_w=lambda: power["w"])
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=on_generate)
    outcome = _run(_cfg(tmp_path, measurement_methodology="steady_state"), device, backend)
    r = outcome.result
    assert "ramp batches left out per cycle: 1" in summary(outcome)
    assert r.measurement_methodology == "steady_state"
    assert r.steady_state is not None and r.steady_state.trimmed_batches == [1]
    assert r.steady_state.full_window_gross_j == [400.0]
    assert r.total_energy_j == 390.0  # from the first steady batch's start to the end
    assert r.output_tokens == 2 * 2 * 4  # two kept batches of two prompts
    assert r.cycles is not None and r.cycles.records[0].gross_j == 390.0
    assert r.steady_state.ramp_s[0] > 0.03
    assert r.windows["measure"].start_s == pytest.approx(r.cycles.records[0].start_s)
    assert "short_window" in r.quality_flags
    assert r.mlflow_metrics()["steady/trimmed_batches"] == 1.0


def test_total_methodology_reads_the_counter_at_the_edges_only(tmp_path: Path) -> None:
    device = FakeDevice(energy_script=[0.0, 5.0, 100.0, 500.0], power_w=150.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0])
    r = _run(_cfg(tmp_path), device, backend).result
    assert r.measurement_methodology == "total" and r.steady_state is None
    assert r.total_energy_j == 400.0 and r.output_tokens == 24
    assert device.energy_reads == 4


def test_steady_state_with_one_batch_says_nothing_can_be_trimmed(tmp_path: Path) -> None:
    device = FakeDevice(energy_script=[0.0, 5.0, 100.0, 500.0], power_w=150.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0])
    cfg = _cfg(tmp_path, n=2, measurement_methodology="steady_state")
    r = _run(cfg, device, backend).result
    assert r.steady_state is not None and r.steady_state.trimmed_batches == [0]
    assert r.total_energy_j == 400.0
    assert any("one batch" in w for w in r.warnings)


def test_steady_state_on_cpu_keeps_every_batch(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, measurement_methodology="steady_state", cycles=2)
    r = execute(cfg, backend=FakeBackend(), store_probe=lambda c: None).result
    assert r.steady_state is not None and r.steady_state.trimmed_batches == [0, 0]
    assert r.steady_state.full_window_gross_j is None and r.total_energy_j is None
    assert r.output_tokens == 2 * 24


def test_isolated_prefill_measures_whole_one_token_passes_in_their_own_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prefill, "PREFILL_MIN_S", 0.05)
    # Counter: idle 0 -> 5 (100 W over 0.05 s), cycle 100 -> 500, prefill window 600 -> 660.
    device = FakeDevice(energy_script=[0.0, 5.0, 100.0, 500.0, 600.0, 660.0], power_w=150.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=lambda: time.sleep(0.005))
    outcome = _run(_cfg(tmp_path, isolated_prefill=True), device, backend)
    r = outcome.result
    assert "prefill alone" in summary(outcome) and "per pass" in summary(outcome)
    p = r.prefill_isolated
    assert p is not None and p.gross_j == 60.0 and p.batches_per_pass == 3
    one_token_calls = [c for c in backend.generate_calls if c[1] == 1]
    assert len(one_token_calls) == 1 + 3 * p.passes  # one unmeasured pass over the first batch
    assert p.input_tokens_per_pass == 6 * 6
    assert p.per_pass_j == pytest.approx(60.0 / p.passes)
    assert p.per_input_token_j == pytest.approx(60.0 / p.passes / 36)
    assert p.duration_s >= 0.05 and p.net_j is not None and p.net_j < 60.0
    assert r.total_energy_j == 400.0  # the cycles are untouched
    assert "isolated" in p.method
    assert r.mlflow_metrics()["energy/prefill_isolated_per_pass_j"] == pytest.approx(
        60.0 / p.passes, abs=1e-3
    )


def test_idle_settle_runs_before_the_baseline_and_is_recorded(tmp_path: Path) -> None:
    device = FakeDevice(energy_script=[0.0, 5.0, 100.0, 500.0], power_w=80.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0])
    outcome = _run(_cfg(tmp_path, idle_settle_max_s=30), device, backend)
    r = outcome.result
    assert "settled after" in summary(outcome).split("idle settle")[1]
    assert r.idle_settle is not None and r.idle_settle.settled
    assert r.idle_settle.waited_s == pytest.approx(2 * settle.SPAN_S, abs=0.5)
    assert r.windows["idle"].start_s - r.start_time.timestamp() >= r.idle_settle.waited_s
    assert "time/idle_settle_s" in r.mlflow_metrics()


def test_no_settle_without_a_gpu_or_when_off(tmp_path: Path) -> None:
    cpu = execute(_cfg(tmp_path, idle_settle_max_s=30), backend=FakeBackend(), store_probe=lambda c: None)
    assert cpu.result.idle_settle is None
    device = FakeDevice(energy_script=[0.0, 5.0, 100.0, 500.0], power_w=80.0)
    off = _run(_cfg(tmp_path), device, FakeBackend(device="cuda", cuda_devices=[CUDA0])).result
    assert off.idle_settle is None


def test_compile_warms_up_one_batch_per_size_outside_every_window(tmp_path: Path) -> None:
    backend = FakeBackend()
    cfg = _cfg(tmp_path, n=5, cache="static", compile="reduce-overhead")
    r = execute(cfg, backend=backend, store_probe=lambda c: None).result
    assert r.warmup is not None and r.warmup.compile_batches == 2  # sizes 2 and 1 (5 = 2 + 2 + 1)
    assert r.warmup.compile_s is not None and r.warmup.compile_s >= 0
    assert [c[0] for c in backend.generate_calls] == [2, 1, 2, 2, 2, 1]  # compile, warm-up, 3 measured
    assert "time/compile_s" in r.mlflow_metrics()
    eager = execute(_cfg(tmp_path, n=5), backend=FakeBackend(), store_probe=lambda c: None).result
    assert eager.warmup is not None and eager.warmup.compile_batches == 0 and eager.warmup.compile_s is None
