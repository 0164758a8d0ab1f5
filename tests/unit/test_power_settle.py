"""Issue 19: the opt-in power settle warm-up (``warmup_power_settle_pct``) waits for the GPUs' power, not
only the batch latency, to settle before anything is measured.

A ``Board`` is the fake GPU and the fake warm-up clock (``warmup.TIMER``) in one: each ``generate()`` moves
the clock by ``STEP_S`` and the energy counter by the scripted watts x ``STEP_S``, so a stretch (whole
batches until >= 2 s: 4 batches of 0.5 s) has an exact mean power.
"""

from __future__ import annotations

import json
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


def test_power_settle_stops_at_the_first_stretch_within_pct_of_the_one_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    board = Board(stretches(300, 330, 350, 352, 352))
    record, notes, backend, show = _warm_up(monkeypatch, board, warmup_power_settle_pct=1.0)
    # 330/300 +10 %, 350/330 +6.1 %, 352/350 +0.57 % < 1 %: settled at stretch 4, stretch 5 never runs
    assert record.power_w == pytest.approx([300.0, 330.0, 350.0, 352.0])
    assert record.power_settled is True and record.power_s == pytest.approx(4 * 2.0)
    assert notes == []
    assert len(backend.batches) == 1 + 4 * PER_STRETCH  # whole batches until each stretch lasts 2 s
    groups = _groups()
    assert backend.batches == [groups[i % len(groups)] for i in range(17)]  # the warm-up rotation goes on
    assert record.batches == 1 and record.latencies_s == [STEP_S]  # the latency warm-up's own
    assert record.passes == 1 and record.est_window_s == pytest.approx(len(groups) * STEP_S)  # from latency
    assert "warm-up: power settled after 4 stretches (300.0 W -> 352.0 W)" in show.messages


def test_the_threshold_decides_where_it_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    record, _, _, _ = _warm_up(monkeypatch, Board(stretches(300, 330, 350, 352)), warmup_power_settle_pct=7.0)
    assert record.power_w == pytest.approx([300.0, 330.0, 350.0])  # 6.1 % < 7 %
    assert record.power_settled is True


def test_power_that_never_settles_stops_at_the_cap_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    watts = stretches(*(300.0 * 1.05**k for k in range(10)))  # +5 % every stretch
    record, notes, _, _ = _warm_up(
        monkeypatch, Board(watts), warmup_power_settle_pct=1.0, warmup_power_max_s=7.0
    )
    assert record.power_settled is False
    assert len(record.power_w) == 4 and record.power_s == pytest.approx(8.0)  # 8 s: the first past 7 s
    (note,) = notes
    assert note == (
        "Warm-up: power still drifting after 8 s (last two stretches 330.8 W, 347.3 W): the first cycle "
        "may draw less than the later ones"
    )


def test_two_stretches_always_run_however_small_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    record, notes, _, _ = _warm_up(
        monkeypatch, Board(stretches(300, 330, 360)), warmup_power_settle_pct=1.0, warmup_power_max_s=0.5
    )
    assert record.power_w == pytest.approx([300.0, 330.0]) and record.power_settled is False
    assert len(notes) == 1 and "still drifting after 4 s" in notes[0]


def test_a_failing_counter_read_ends_the_stage_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # reads 1-2: stretch 1's edges; reads 3-5: stretch 2's start edge, every retry failing
    board = Board(stretches(300, 330, 350), fail_reads=frozenset({3, 4, 5}))
    record, notes, backend, _ = _warm_up(monkeypatch, board, warmup_power_settle_pct=1.0)
    assert record.power_w == pytest.approx([300.0]) and record.power_settled is False
    assert record.power_s == pytest.approx(2.0)
    (note,) = notes
    assert note.startswith(power_settle.POWER_READ_FAILED) and "Unknown Error" in note
    assert len(backend.batches) == 1 + PER_STRETCH  # no batch after the failed read


def test_without_gpus_or_unasked_the_stage_is_skipped_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, notes, backend, show = _warm_up(monkeypatch, Board([300.0]), gpu=False, warmup_power_settle_pct=1.0)
    assert (cpu.power_w, cpu.power_settled, cpu.power_s) == ([], None, None)
    assert notes == [] and len(backend.batches) == 1 and not any("power" in m for m in show.messages)
    unasked, notes, backend, _ = _warm_up(monkeypatch, Board([300.0]))
    assert (unasked.power_w, unasked.power_settled, unasked.power_s) == ([], None, None)
    assert notes == [] and len(backend.batches) == 1


def test_the_rule_compares_with_the_stretch_before() -> None:
    assert power_settle.settled(350.0, 352.0, 1.0)
    assert not power_settle.settled(330.0, 350.0, 1.0)
    assert power_settle.settled(352.0, 349.0, 1.0)  # a fall counts as much as a rise
    assert not power_settle.settled(352.0, 340.0, 1.0)
    assert not power_settle.settled(0.0, 0.0, 1.0)  # a counter that never moved is no settled power


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
    outcome = _run(tmp_path, monkeypatch, Board(stretches(300, 330, 350, 352)), warmup_power_settle_pct=1.0)
    r = outcome.result
    assert r.warmup is not None and r.warmup.power_w == pytest.approx([300.0, 330.0, 350.0, 352.0])
    assert r.warmup.power_settled is True and r.warmup.power_s == pytest.approx(8.0)
    saved = json.loads((outcome.result_dir / "result.json").read_text())["warmup"]
    assert saved["power_settled"] is True and saved["power_w"] == pytest.approx([300, 330, 350, 352])
    assert saved["power_s"] == pytest.approx(8.0)
    assert "power settled after 4 stretches (300.0 W -> 352.0 W)" in summary(outcome)
    assert r.resolved is not None and r.resolved.warmup_power_settle_pct == 1.0
    assert not any("power" in w.lower() and "settle" in w.lower() for w in r.warnings)


def test_a_drifting_run_warns_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    watts = stretches(*(300.0 * 1.05**k for k in range(10)))
    outcome = _run(tmp_path, monkeypatch, Board(watts), warmup_power_settle_pct=1.0, warmup_power_max_s=3.0)
    r = outcome.result
    assert r.status == "completed" and r.warmup is not None and r.warmup.power_settled is False
    assert any(
        "power still drifting after 4 s (last two stretches 300.0 W, 315.0 W)" in w for w in r.warnings
    )
    assert "power still drifting after 4 s (300.0 W, 315.0 W; see the warnings)" in summary(outcome)


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
