"""Issue 19: the opt-in power settle warm-up (``warmup_power_settle_pct``) waits for the GPUs' power, not
only the batch latency, to settle before anything is measured.

A ``Board`` is the fake GPU and the fake warm-up clock (``warmup.TIMER``) in one: each ``generate()`` moves
the clock by ``STEP_S`` and the energy counter by the scripted watts x ``STEP_S``, so a stretch (whole
batches until >= 2 s: 4 batches of 0.5 s) has an exact mean power.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llem_mlflow.cli.summary import summary
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.config_gpu import GPU_DEFAULTS
from llem_mlflow.errors import ConfigError, DeviceError
from llem_mlflow.measure import power_settle, rapl, warmup, workload
from llem_mlflow.measure.records import WarmupRecord
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.run.execute import GpuSet, Outcome, execute
from tests.fakes import SMALL_SHAPE, FakeBackend, FakeDevice, RecordingBackend, StageLog, small_config

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)
STEP_S = 0.5  # each generate() on the fake clock: a stretch is 4 batches, 2.0 s
PER_STRETCH = 4


class Board:
    """Fake clock and energy counter: batch i draws ``watts[i]`` (the last value repeats) for ``STEP_S``.

    ``fail_reads``: counter reads (1-based, counted over all reads) that raise ``DeviceError``.
    """

    def __init__(self, watts: list[float], fail_reads: frozenset[int] = frozenset()) -> None:
        self.watts, self.fail_reads = watts, fail_reads
        self.now_s = self.energy_j = 0.0
        self.batches = self.reads = 0

    def clock(self) -> float:
        return self.now_s

    def tick(self) -> None:
        self.now_s += STEP_S
        self.energy_j += self.watts[min(self.batches, len(self.watts) - 1)] * STEP_S
        self.batches += 1

    def counter(self) -> float:
        self.reads += 1
        if self.reads in self.fail_reads:
            raise DeviceError("Unknown Error")
        return self.energy_j


def stretches(*watts: float, warm: int = 1) -> list[float]:
    """Per-batch watts: ``warm`` latency warm-up batches at the first value, then 4 batches per stretch."""
    return [watts[0]] * warm + [w for w in watts for _ in range(PER_STRETCH)]


@pytest.fixture(autouse=True)
def _no_rapl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", tmp_path / "no-powercap")


def _cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    return small_config(tmp_path / "out", **kw)


def _groups() -> list[list[list[int]]]:
    return workload.batches(workload.synthetic_prompts(SMALL_SHAPE.vocab_size, 8, 4, 42), 2)


def _warm_up(
    monkeypatch: pytest.MonkeyPatch, board: Board, gpu: bool = True, **kw: object
) -> tuple[WarmupRecord, list[str], RecordingBackend, StageLog]:
    """``warm_up`` alone, on the board's clock and counter; (record, notes, backend, progress)."""
    monkeypatch.setattr(warmup, "TIMER", board.clock)
    backend = RecordingBackend(on_generate=board.tick)
    devices = [FakeDevice(energy_script=board.counter)] if gpu else []
    notes: list[str] = []
    show = StageLog()
    cfg = ExperimentConfig.model_validate({"n": 8, "batch_size": 2, "max_output_tokens": 3, **kw})
    record = warmup.warm_up(cfg, backend, _groups(), show, devices=devices, notes=notes)
    return record, notes, backend, show


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, board: Board, **kw: object) -> Outcome:
    """A whole run on one fake GPU whose counter and warm-up clock are ``board``'s."""
    monkeypatch.setattr(warmup, "TIMER", board.clock)
    backend = FakeBackend(on_generate=board.tick, device="cuda", cuda_devices=[CUDA0])
    device = FakeDevice(energy_script=board.counter, power_w=150.0)
    return execute(
        _cfg(tmp_path, **kw),
        backend=backend,
        gpus=lambda ids: GpuSet([device], "580"),
        progress=StageLog(),
        store_probe=lambda c: None,
    )


# ---------------------------------------------------------------- the rule


def test_a_slow_thermal_climb_keeps_it_warming_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # the H100 case: ~0.5 W/s at ~380 W (+1 W per 2 s stretch)
    watts = [380.0 + k for k in range(12)]
    assert abs(watts[1] - watts[0]) / watts[0] * 100 < 1.0  # 0.26 %: the old rule settled at stretch 2
    board = Board(stretches(*watts))
    record, notes, backend, show = _warm_up(
        monkeypatch, board, warmup_power_settle_pct=1.0, warmup_power_max_s=20.0
    )
    # fitted 0.5 W/s x 20 s = 10 W on 389 W: 2.6 % per window > 1 %, at every stretch until the cap
    assert record.power_settled is False and record.power_s == pytest.approx(20.0)
    assert record.power_w == pytest.approx(watts[:10])
    assert record.power_drift_pct == pytest.approx(100 * 0.5 * 20 / 389) and record.power_horizon_s == 20.0
    assert len(backend.batches) == 1 + 10 * PER_STRETCH
    (note,) = notes
    assert note == (
        "Warm-up: power still drifting after 20 s (climbing ~2.6 % per 20 s window; last 5 stretches "
        "385.0 W -> 389.0 W): the first cycle may draw less than the later ones"
    )
    assert any("under 1 % per 20 s window), at most 20 s" in m for m in show.messages)


def test_flat_power_settles_at_the_fifth_stretch(monkeypatch: pytest.MonkeyPatch) -> None:
    board = Board(stretches(300, 300, 300, 300, 300, 300))
    record, notes, backend, show = _warm_up(monkeypatch, board, warmup_power_settle_pct=1.0)
    assert record.power_w == pytest.approx([300.0] * 5)  # no verdict before 5 stretches; stretch 6 never runs
    assert record.power_settled is True and record.power_s == pytest.approx(5 * 2.0)
    assert notes == []
    assert len(backend.batches) == 1 + 5 * PER_STRETCH  # whole batches until each stretch lasts 2 s
    groups = _groups()
    assert backend.batches == [groups[i % len(groups)] for i in range(21)]  # the warm-up rotation goes on
    assert record.batches == 1 and record.latencies_s == [STEP_S]  # the latency warm-up's own
    assert record.passes == 1 and record.est_window_s == pytest.approx(len(groups) * STEP_S)  # from latency
    assert "warm-up: power settled after 5 stretches (300.0 W -> 300.0 W; ~0.00 % per 20 s window)" in (
        show.messages
    )


def _approach(tau_s: float, stretches_n: int) -> list[float]:
    """Stretch powers rising as 384 - 12 exp(-t / tau_s), t the stretch mid-times 1, 3, 5 ... s."""
    return [round(384.0 - 12.0 * math.exp(-(2 * k + 1) / tau_s), 1) for k in range(stretches_n)]


def test_a_climb_that_flattens_settles_once_the_fitted_slope_is_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    watts = _approach(6.0, 15)  # 373.8, 376.7, ... 383.9
    assert abs(watts[1] - watts[0]) / watts[0] * 100 < 1.0  # 0.78 %: the old rule settled at stretch 2
    record, notes, _, _ = _warm_up(monkeypatch, Board(stretches(*watts)), warmup_power_settle_pct=1.0)
    # the fit over stretches 5-9 projects 1.28 % per 20 s, over 6-10 0.91 %: settled at stretch 10
    assert record.power_w == pytest.approx(watts[:10])
    assert record.power_settled is True and record.power_s == pytest.approx(20.0) and notes == []


def test_the_threshold_decides_where_it_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    watts = _approach(6.0, 15)
    record, _, _, _ = _warm_up(monkeypatch, Board(stretches(*watts)), warmup_power_settle_pct=2.0)
    assert record.power_w == pytest.approx(watts[:8])  # 2.46 % at stretch 7, 1.75 % < 2 % at stretch 8
    assert record.power_settled is True


def test_the_horizon_is_min_window_s_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    watts = [300.0 + 0.2 * k for k in range(40)]  # 0.1 W/s: 2 W per 20 s (0.67 %), 6 W per 60 s (~2 %)
    default, _, _, _ = _warm_up(monkeypatch, Board(stretches(*watts)), warmup_power_settle_pct=1.0)
    assert default.power_settled is True and len(default.power_w) == 5
    longer, notes, _, show = _warm_up(
        monkeypatch, Board(stretches(*watts)), warmup_power_settle_pct=1.0, min_window_s=60.0
    )
    assert longer.power_settled is False and longer.power_s == pytest.approx(60.0)
    assert "climbing ~2.0 % per 60 s window" in notes[0]
    assert any("under 1 % per 60 s window" in m for m in show.messages)


def test_power_that_never_settles_stops_at_the_cap_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    watts = stretches(*(300.0 * 1.05**k for k in range(10)))  # +5 % every stretch
    record, notes, _, _ = _warm_up(
        monkeypatch, Board(watts), warmup_power_settle_pct=1.0, warmup_power_max_s=13.0
    )
    assert record.power_settled is False
    assert len(record.power_w) == 7 and record.power_s == pytest.approx(14.0)  # 14 s: the first past 13 s
    (note,) = notes
    # the fit over stretches 3-7 (330.8 ... 402.0 W): ~8.9 W/s x 20 s on 402.0 W
    assert note == (
        "Warm-up: power still drifting after 14 s (climbing ~44.3 % per 20 s window; last 5 stretches "
        "330.8 W -> 402.0 W): the first cycle may draw less than the later ones"
    )


def test_a_falling_power_is_a_drift_too(monkeypatch: pytest.MonkeyPatch) -> None:
    watts = [400.0 - k for k in range(10)]
    record, notes, _, _ = _warm_up(
        monkeypatch, Board(stretches(*watts)), warmup_power_settle_pct=1.0, warmup_power_max_s=10.0
    )
    assert record.power_settled is False and len(record.power_w) == 5
    assert "(falling ~2.5 % per 20 s window;"  # 0.5 W/s x 20 s on 396 W in notes[0]


def test_five_stretches_always_run_however_small_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    record, notes, _, _ = _warm_up(
        monkeypatch, Board(stretches(300, 330, 360)), warmup_power_settle_pct=1.0, warmup_power_max_s=0.5
    )
    assert record.power_w == pytest.approx([300.0, 330.0, 360.0, 360.0, 360.0])
    assert record.power_settled is False
    assert len(notes) == 1 and "still drifting after 10 s" in notes[0]


def test_a_failing_counter_read_ends_the_stage_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # reads 1-2: stretch 1's edges; reads 3-5: stretch 2's start edge, every retry failing
    board = Board(stretches(300, 330, 350), fail_reads=frozenset({3, 4, 5}))
    record, notes, backend, _ = _warm_up(monkeypatch, board, warmup_power_settle_pct=1.0)
    assert record.power_w == pytest.approx([300.0]) and record.power_settled is False
    assert record.power_s == pytest.approx(2.0)
    (note,) = notes
    assert note.startswith(power_settle.POWER_READ_FAILED) and "Unknown Error" in note
    assert len(backend.batches) == 1 + PER_STRETCH  # no batch after the failed read


def test_a_read_failing_after_the_fit_began_still_ends_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    # 2 reads per stretch: reads 13-15 are stretch 7's start edge
    watts = [380.0 + k for k in range(12)]
    board = Board(stretches(*watts), fail_reads=frozenset({13, 14, 15}))
    record, notes, _, _ = _warm_up(monkeypatch, board, warmup_power_settle_pct=1.0)
    assert record.power_w == pytest.approx(watts[:6]) and record.power_settled is False
    assert len(notes) == 1 and notes[0].startswith(power_settle.POWER_READ_FAILED)


def test_without_gpus_or_unasked_the_stage_is_skipped_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, notes, backend, show = _warm_up(monkeypatch, Board([300.0]), gpu=False, warmup_power_settle_pct=1.0)
    assert (cpu.power_w, cpu.power_settled, cpu.power_s) == ([], None, None)
    assert notes == [] and len(backend.batches) == 1 and not any("power" in m for m in show.messages)
    unasked, notes, backend, _ = _warm_up(monkeypatch, Board([300.0]))
    assert (unasked.power_w, unasked.power_settled, unasked.power_s) == ([], None, None)
    assert notes == [] and len(backend.batches) == 1


def test_settle_power_keeps_what_the_decision_was_made_from() -> None:
    board = Board([380.0 + k // PER_STRETCH for k in range(40)])
    backend = RecordingBackend(on_generate=board.tick)
    cfg = ExperimentConfig(warmup_power_settle_pct=1.0, warmup_power_max_s=12.0, min_window_s=30.0)
    device = FakeDevice(energy_script=board.counter)
    got = power_settle.settle_power(cfg, backend, [device], _groups(), StageLog(), first=0, clock=board.clock)
    assert got is not None and got.settled is False
    assert got.mid_s == pytest.approx([1.0, 3.0, 5.0, 7.0, 9.0, 11.0])  # from the stage's start
    assert got.horizon_s == 30.0 and got.slope_w_per_s == pytest.approx(0.5)
    assert got.drift_pct_per_window == pytest.approx(0.5 * 30.0 / 385.0 * 100)


def test_the_fit_and_the_drift() -> None:
    assert power_settle.fit_slope_w_per_s([1, 3, 5, 7, 9], [380, 381, 382, 383, 384]) == pytest.approx(0.5)
    assert power_settle.fit_slope_w_per_s([1, 3, 5, 7, 9], [384, 383, 382, 381, 380]) == pytest.approx(-0.5)
    assert power_settle.fit_slope_w_per_s([1, 3, 5, 7, 9], [300, 310, 300, 310, 300]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="two distinct times"):
        power_settle.fit_slope_w_per_s([2, 2], [300, 310])
    assert power_settle.drift_pct(0.5, 20.0, 400.0) == pytest.approx(2.5)
    assert power_settle.drift_pct(-0.5, 20.0, 400.0) == pytest.approx(2.5)  # a fall counts as much as a rise
    assert power_settle.drift_pct(0.0, 20.0, 0.0) is None  # a counter that never moved is no settled power
    assert power_settle.horizon_for(0.0) == power_settle.POWER_HORIZON_S == 20.0
    assert power_settle.horizon_for(45.0) == 45.0


# ---------------------------------------------------------------- config


def test_the_fields_are_bounded_opt_in_and_refused_in_the_server_scenario() -> None:
    assert (
        ExperimentConfig().warmup_power_settle_pct is None and ExperimentConfig().warmup_power_max_s == 60.0
    )
    assert "warmup_power_settle_pct" not in GPU_DEFAULTS and "warmup_power_max_s" not in GPU_DEFAULTS
    for bad in ({"warmup_power_settle_pct": 0}, {"warmup_power_settle_pct": 101}, {"warmup_power_max_s": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            load_config(None, **bad)
    with pytest.raises(ConfigError, match="warmup_power_max_s"):
        load_config(None, warmup_power_max_s=601)
    server = {"scenario": "server", "server_url": "http://127.0.0.1:8000"}
    with pytest.raises(
        ConfigError, match="warmup_power_settle_pct: not available with scenario: server"
    ) as info:
        load_config(None, warmup_power_settle_pct=1.0, **server)
    assert "\n" not in str(info.value)
    assert (
        load_config(None, warmup_power_max_s=30, **server).warmup_power_max_s == 30
    )  # the cap alone is inert


# ---------------------------------------------------------------- whole runs


def test_a_run_records_the_power_settle_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # fits: 350-352 over stretches 1-5 0.25 W/s (1.4 % per 20 s), over 2-6 0.1 W/s (0.57 %): settled at 6
    board = Board(stretches(350, 351, 352, 352, 352, 352))
    outcome = _run(tmp_path, monkeypatch, board, warmup_power_settle_pct=1.0)
    r = outcome.result
    expected = [350.0, 351.0, 352.0, 352.0, 352.0, 352.0]
    assert r.warmup is not None and r.warmup.power_w == pytest.approx(expected)
    assert r.warmup.power_settled is True and r.warmup.power_s == pytest.approx(12.0)
    saved = json.loads((outcome.result_dir / "result.json").read_text())["warmup"]
    assert saved["power_settled"] is True and saved["power_w"] == pytest.approx(expected)
    assert saved["power_s"] == pytest.approx(12.0)
    assert saved["power_drift_pct"] == pytest.approx(100 * 0.1 * 20 / 352)  # the fit over stretches 2-6
    assert saved["power_horizon_s"] == 20.0
    assert "power settled after 6 stretches (350.0 W -> 352.0 W)" in summary(outcome)
    assert r.resolved is not None and r.resolved.warmup_power_settle_pct == 1.0
    assert not any("power" in w.lower() and "settle" in w.lower() for w in r.warnings)


def test_a_drifting_run_warns_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watts = stretches(*(300.0 * 1.05**k for k in range(10)))
    outcome = _run(tmp_path, monkeypatch, Board(watts), warmup_power_settle_pct=1.0, warmup_power_max_s=3.0)
    r = outcome.result
    assert r.status == "completed" and r.warmup is not None and r.warmup.power_settled is False
    assert any("power still drifting after 10 s (climbing ~" in w for w in r.warnings)
    assert "power still drifting after 10 s (347.3 W, 364.7 W; see the warnings)" in summary(outcome)


def test_a_failed_read_in_warm_up_does_not_stop_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    board = Board(stretches(300, 330, 350), fail_reads=frozenset({3, 4, 5}))
    outcome = _run(tmp_path, monkeypatch, board, warmup_power_settle_pct=1.0, cycles=2)
    r = outcome.result
    assert r.status == "completed" and r.cycles is not None and r.cycles.n == 2  # measured as asked
    assert r.total_energy_j is not None and r.total_energy_j > 0  # the cycles' counter reads work again
    assert sum(w.startswith(power_settle.POWER_READ_FAILED) for w in r.warnings) == 1
    assert "power settle ended after 2 s: an energy counter read failed" in summary(outcome)


def test_a_cpu_run_asked_for_it_skips_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    board = Board([300.0])
    monkeypatch.setattr(warmup, "TIMER", board.clock)
    outcome = execute(
        _cfg(tmp_path, warmup_power_settle_pct=1.0),
        backend=FakeBackend(on_generate=board.tick),
        progress=StageLog(),
        store_probe=lambda c: None,
    )
    r = outcome.result
    assert r.warmup is not None and (r.warmup.power_w, r.warmup.power_settled) == ([], None)
    assert not any("power" in w.lower() for w in r.warnings)
    assert not any(row.startswith("warm-up") for row in summary(outcome).splitlines())
    assert board.batches == 1 + 4  # one warm-up batch, one cycle of 4: no power stretch
