"""Issue 19 item 2: ``min_window_s`` repeats the prompt set within each cycle; a short window is warned
about before it is measured.

Warm-up latencies come from a fake clock (``warmup.TIMER``) that every ``generate()`` advances by a known
step, so the passes are exact; the measured windows themselves run on the real clock (microseconds).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from llem_mlflow.cli.summary import summary
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.errors import ConfigError, RunInterrupted
from llem_mlflow.figures import quality
from llem_mlflow.measure import rapl, warmup, workload
from llem_mlflow.measure.records import WarmupRecord
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.run.execute import GpuSet, Outcome, execute
from tests.fakes import SMALL_SHAPE, FakeBackend, FakeDevice, RecordingBackend, StageLog, small_config

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)
BATCH_S = 0.05  # what the fake clock says each generate() takes
# n=8, batch_size=2: 4 batches of 2 rows a pass, 3 new tokens a row
PASS_TOKENS = 8 * 3


class Clock:
    """``warmup.TIMER``'s fake: ``tick`` (each generate()) moves it by ``step_s``."""

    def __init__(self, step_s: float) -> None:
        self.now_s, self.step_s = 0.0, step_s

    def __call__(self) -> float:
        return self.now_s

    def tick(self) -> None:
        self.now_s += self.step_s


@pytest.fixture(autouse=True)
def _no_rapl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", tmp_path / "no-powercap")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(BATCH_S)
    monkeypatch.setattr(warmup, "TIMER", fake)
    return fake


def _cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    return small_config(tmp_path / "out", **kw)


def _run(
    tmp_path: Path, clock: Clock, gpu: bool = False, **kw: object
) -> tuple[Outcome, RecordingBackend, StageLog]:
    backend = RecordingBackend(
        on_generate=clock.tick, **({"device": "cuda", "cuda_devices": [CUDA0]} if gpu else {})
    )
    counter = itertools.count(0.0, 7.0)
    device = FakeDevice(energy_script=lambda: float(next(counter)), power_w=150.0)
    show = StageLog()
    outcome = execute(
        _cfg(tmp_path, **kw),
        backend=backend,
        gpus=lambda ids: GpuSet([device], "580"),
        progress=show,
        store_probe=lambda c: None,
    )
    return outcome, backend, show


# ---------------------------------------------------------------- the passes rule


def test_passes_cover_min_window_s_from_the_median_of_the_settle_rules_latencies() -> None:
    assert warmup.passes_for(1.0, [BATCH_S], 4) == (5, pytest.approx(0.2))  # 4 x 0.05 s a pass
    # the last 3 latencies (median 0.05 s), not all six (median 0.525 s): the settled ones decide
    assert warmup.passes_for(1.0, [1.0, 1.0, 1.0, 0.05, 0.04, 0.05], 4)[0] == 5
    assert warmup.passes_for(1.0, [0.3, 0.1], 1)[0] == 5  # fewer than 3: all of them (median 0.2 s)
    assert warmup.passes_for(0.1, [BATCH_S], 4)[0] == 1  # one pass is long enough already
    assert warmup.passes_for(0.0, [BATCH_S], 4) == (1, pytest.approx(0.2))
    assert warmup.passes_for(1.0, [], 4) == (1, None)  # nothing timed
    assert warmup.passes_for(3600.0, [1e-6], 1)[0] == warmup.MAX_PASSES  # capped
    assert warmup.passes_for(1.0, [0.0], 1)[0] == warmup.MAX_PASSES  # a clock that did not move


def test_a_capped_min_window_is_a_warning() -> None:
    cfg = ExperimentConfig(min_window_s=3600)
    record = WarmupRecord(batches=1, latencies_s=[1e-6], rule="fixed: 1 batch", passes=warmup.MAX_PASSES)
    capped = record.model_copy(update={"est_window_s": 0.01})
    (note,) = warmup.window_warnings(cfg, capped, gpus=False)
    assert "needs more than 10,000 passes" in note and "capped" in note
    assert warmup.window_warnings(cfg, capped.model_copy(update={"est_window_s": 3600.0}), gpus=False) == []


def test_the_pre_measure_rule_is_the_short_window_flags() -> None:
    assert warmup.MIN_COUNTER_UPDATES == quality.MIN_COUNTER_UPDATES
    assert quality.QualityInputs(window_s=1.0, output_tokens=1).counter_update_s == warmup.COUNTER_UPDATE_S


def test_min_window_needs_a_warm_up_batch_and_an_in_process_run() -> None:
    with pytest.raises(ConfigError, match="min_window_s needs at least one warm-up batch to time") as info:
        load_config(None, min_window_s=5, warmup_batches=0)
    assert "\n" not in str(info.value)
    assert load_config(None, min_window_s=5, warmup_batches=0, warmup_settle_cv_pct=2).min_window_s == 5
    with pytest.raises(ConfigError, match="min_window_s: not available with scenario: server"):
        load_config(None, min_window_s=5, scenario="server", server_url="http://127.0.0.1:8000")
    with pytest.raises(ConfigError, match="min_window_s"):
        load_config(None, min_window_s=-1)


# ---------------------------------------------------------------- whole runs on fakes


def test_each_cycle_runs_the_prompt_set_as_often_as_min_window_s_needs(tmp_path: Path, clock: Clock) -> None:
    outcome, backend, show = _run(tmp_path, clock, min_window_s=1.0, cycles=2)
    r = outcome.result
    assert r.warmup is not None and r.warmup.passes == 5
    assert r.warmup.est_window_s == pytest.approx(1.0)
    assert len(backend.batches) == 1 + 2 * 20  # one warm-up batch, then 5 passes of 4 batches per cycle
    assert r.cycles is not None and [c.output_tokens for c in r.cycles.records] == [5 * PASS_TOKENS] * 2
    assert r.output_tokens == 2 * 5 * PASS_TOKENS
    groups = workload.batches(workload.synthetic_prompts(SMALL_SHAPE.vocab_size, 8, 4, 42), 2)
    first, second = backend.batches[1:21], backend.batches[21:]
    assert first == groups * 5  # cycle 0: dataset order, repeated
    assert second == workload.cycle_order(groups * 5, 1, 42)  # cycle 1: the repeated list shuffled
    assert second != first and sorted(second) == sorted(first)
    assert "measuring 8 prompts x 5 passes in 20 batches (cycle 1/2)" in show.messages
    assert (20, 20) in show.measured and all(total == 20 for _, total in show.measured)
    assert "8 prompts x 5 passes per cycle: 320 tokens in, 240 out" in summary(outcome)
    assert r.mlflow_metrics()["workload/passes_per_cycle"] == 5
    assert r.resolved is not None and r.resolved.min_window_s == 1.0


def test_min_window_zero_is_one_pass_as_before(tmp_path: Path, clock: Clock) -> None:
    outcome, backend, show = _run(tmp_path, clock, cycles=2)
    r = outcome.result
    assert r.warmup is not None and r.warmup.passes == 1 and r.warmup.est_window_s == pytest.approx(0.2)
    assert len(backend.batches) == 1 + 2 * 4 and r.output_tokens == 2 * PASS_TOKENS
    assert "measuring 8 prompts in 4 batches (cycle 1/2)" in show.messages
    assert "passes" not in summary(outcome) and r.mlflow_metrics()["workload/passes_per_cycle"] == 1


def test_a_short_window_on_a_gpu_is_warned_about_before_the_baseline(tmp_path: Path, clock: Clock) -> None:
    outcome, _, show = _run(tmp_path, clock, gpu=True, baseline_s=0.05)  # 4 x 0.05 s: a 0.2 s window
    text = "The measured window will last about 0.20 s, fewer than 10 updates of the energy counter"
    (warned,) = [i for i, m in enumerate(show.messages) if text in m]
    baseline = next(i for i, m in enumerate(show.messages) if m.startswith("idle baseline"))
    assert warned < baseline  # said right after warm-up, before anything is measured
    assert "set min_window_s: 20, or more prompts" in show.messages[warned]
    assert any(text in w for w in outcome.result.warnings)
    assert "short_window" in outcome.result.quality_flags  # the after-measuring flag stays


def test_no_pre_measure_warning_without_gpus_or_for_a_long_enough_window(
    tmp_path: Path, clock: Clock
) -> None:
    cpu, _, _ = _run(tmp_path / "cpu", clock)
    assert not any("updates of the energy counter" in w for w in cpu.result.warnings)
    clock.now_s = 0.0
    long, _, _ = _run(tmp_path / "gpu", clock, gpu=True, min_window_s=1.0)  # 5 passes: 1.0 s expected
    assert not any("will last about" in w for w in long.result.warnings)


def test_ctrl_c_inside_a_repeated_cycle_keeps_its_completed_batches(tmp_path: Path, clock: Clock) -> None:
    calls = itertools.count(1)

    def tick_then_stop() -> None:
        clock.tick()
        if next(calls) == 1 + 7:  # the 7th measured batch: 6 of the cycle's 20 completed
            raise KeyboardInterrupt

    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=tick_then_stop)
    device = FakeDevice(energy_script=[1000.0, 1300.0], power_w=150.0)
    with pytest.raises(RunInterrupted) as info:
        execute(
            _cfg(tmp_path, min_window_s=1.0),
            backend=backend,
            gpus=lambda ids: GpuSet([device], "580"),
            store_probe=lambda c: None,
        )
    assert "kept 0 of 1 completed cycle(s) and 6 of 20 batches of cycle 1" in str(info.value)


def test_steady_state_trims_within_a_repeated_cycle(tmp_path: Path, clock: Clock) -> None:
    outcome, backend, _ = _run(
        tmp_path, clock, gpu=True, min_window_s=1.0, measurement_methodology="steady_state"
    )
    r = outcome.result
    assert r.warmup is not None and r.warmup.passes == 5 and len(backend.batches) == 1 + 20
    assert r.steady_state is not None and len(r.steady_state.trimmed_batches) == 1
    trimmed = r.steady_state.trimmed_batches[0]
    assert r.output_tokens == (20 - trimmed) * 2 * 3  # the steady batches of the 20
