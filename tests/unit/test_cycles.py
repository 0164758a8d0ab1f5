"""Repeated cycles: per-cycle figures, Student-t intervals, reshuffled batch order, MLflow histories."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import pytest

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure import workload
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.run.execute import GpuSet, Outcome, execute
from tests.fakes import FakeBackend, FakeDevice

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)
# Counter reads: idle start/end, then start/end of each cycle: gross 1000, 1020, 990 J.
COUNTER = [0.0, 30.0, 100.0, 1100.0, 1200.0, 2220.0, 2300.0, 3290.0]


def _run(tmp_path: Path, cycles: int, counter: list[float], sleep_s: float = 0.0, **kw: object) -> Outcome:
    cfg = ExperimentConfig.model_validate(
        {
            **dict(
                n=5, batch_size=2, max_input_tokens=6, max_output_tokens=4, output_dir=str(tmp_path / "out"),
                mlflow=False, baseline_s=0.05, sampling_interval_s=0.005, cycles=cycles,
            ),
            **kw,
        }
    )  # fmt: skip
    device = FakeDevice(energy_script=counter, power_w=150.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=lambda: time.sleep(sleep_s))
    return execute(cfg, backend=backend, gpus=lambda ids: GpuSet([device], "580"), store_probe=lambda c: None)


def test_three_cycles_give_per_cycle_values_and_a_student_t_interval(tmp_path: Path) -> None:
    r = _run(tmp_path, 3, COUNTER).result
    c = r.cycles
    assert c is not None and c.n == 3 and [x.index for x in c.records] == [0, 1, 2]
    assert [x.gross_j for x in c.records] == [1000.0, 1020.0, 990.0]
    assert [x.output_tokens for x in c.records] == [20, 20, 20]
    per_token = [50.0, 51.0, 49.5]
    assert [x.energy_per_output_token_j for x in c.records] == per_token
    interval = c.energy_per_output_token_j_ci95
    assert interval is not None and interval.n == 3 and interval.values == per_token
    assert interval.scale == "log"  # J/token is positive: t interval of ln(values), exponentiated
    logs = [math.log(v) for v in per_token]
    half = 4.302653 * statistics.stdev(logs) / math.sqrt(3)  # t(0.975, 2) = 4.302653
    assert interval.mean == pytest.approx(statistics.mean(per_token))
    assert interval.ci95_low == pytest.approx(math.exp(statistics.mean(logs) - half), rel=1e-9)
    assert interval.ci95_high == pytest.approx(math.exp(statistics.mean(logs) + half), rel=1e-9)
    net = c.net_j_ci95
    assert net is not None and net.scale == "linear"  # net energy can be negative: linear
    # Top level: all cycles together.
    assert r.total_energy_j == 3010.0 and r.output_tokens == 60
    assert r.avg_energy_per_token_j == pytest.approx(3010.0 / 60)
    assert r.energy is not None and r.energy.edge_uncertainty_j is not None
    assert r.energy.edge_uncertainty_j == pytest.approx(sum(x.edge_uncertainty_j or 0 for x in c.records))
    assert r.windows["measure"].start_s == c.records[0].start_s
    assert r.windows["measure"].end_s == c.records[2].end_s


def test_one_cycle_has_values_but_no_interval(tmp_path: Path) -> None:
    c = _run(tmp_path, 1, COUNTER[:4]).result.cycles
    assert c is not None and c.n == 1
    interval = c.energy_per_output_token_j_ci95
    assert interval is not None and interval.values == [50.0]
    assert (interval.std, interval.ci95_low, interval.ci95_high) == (None, None, None)


def test_cpu_cycles_have_time_intervals_and_no_energy(tmp_path: Path) -> None:
    cfg = ExperimentConfig(n=4, batch_size=2, max_input_tokens=4, max_output_tokens=3, cycles=3,
                           output_dir=str(tmp_path / "o"), mlflow=False)  # fmt: skip
    backend = FakeBackend()
    c = execute(cfg, backend=backend, store_probe=lambda c: None).result.cycles
    assert c is not None and c.n == 3 and c.output_tokens_per_s_ci95.n == 3
    assert c.energy_per_output_token_j_ci95 is None and c.gross_j_ci95 is None
    assert len(backend.generate_calls) == 1 + 3 * 2  # one warm-up, two batches per cycle


def test_cooldown_separates_cycles(tmp_path: Path) -> None:
    c = _run(tmp_path, 2, COUNTER[:6], cooldown_s=0.05).result.cycles
    assert c is not None and c.records[1].start_s - c.records[0].end_s >= 0.05


def test_batch_order_is_dataset_order_first_then_seeded_shuffles() -> None:
    groups = list(range(10))
    assert workload.cycle_order(groups, 0, seed=42) == groups
    first, again = workload.cycle_order(groups, 1, seed=42), workload.cycle_order(groups, 1, seed=42)
    assert first == again and sorted(first) == groups and first != groups
    assert workload.cycle_order(groups, 2, seed=42) != first
    assert workload.cycle_order(groups, 1, seed=7) != first


def test_cycles_reach_mlflow_as_intervals_and_histories(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    outcome = _run(tmp_path, 3, COUNTER, mlflow=True, tracking_uri=uri)
    client = MlflowClient(uri)
    assert outcome.run_id is not None
    metrics = client.get_run(outcome.run_id).data.metrics
    interval = outcome.result.cycles.energy_per_output_token_j_ci95  # type: ignore[union-attr]
    assert metrics["energy/per_output_token_j"] == pytest.approx(50.1667, abs=1e-4)
    assert metrics["energy/per_output_token_j_ci95_low"] == pytest.approx(interval.ci95_low, rel=1e-5)  # type: ignore[union-attr]
    assert metrics["energy/per_output_token_j_ci95_high"] == pytest.approx(interval.ci95_high, rel=1e-5)  # type: ignore[union-attr]
    assert "throughput/output_tokens_per_s_ci95_low" in metrics
    history = client.get_metric_history(outcome.run_id, "cycles/energy_per_output_token_j")
    assert sorted((h.step, h.value) for h in history) == [(0, 50.0), (1, 51.0), (2, 49.5)]


def test_two_cycles_publish_no_interval_anywhere(tmp_path: Path) -> None:
    """Issue 16 item 8: two cycles (t = 12.7) logged time/cycle_s_ci95_low = -170.7 and the like."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    outcome = _run(tmp_path, 2, COUNTER[:6], mlflow=True, tracking_uri=uri)
    assert outcome.run_id is not None
    metrics = MlflowClient(uri).get_run(outcome.run_id).data.metrics
    assert not [k for k in metrics if "_ci95_" in k]
    c = outcome.result.cycles
    assert c is not None and c.n == 2
    for interval in (c.duration_s_ci95, c.output_tokens_per_s_ci95, c.energy_per_output_token_j_ci95):
        assert interval is not None and interval.std is not None and interval.ci95_low is None
        assert interval.no_interval_reason is not None
    (warning,) = [w for w in outcome.result.warnings if w.startswith("No 95 % intervals across cycles")]
    assert "at least 3" in warning
    from llem_mlflow.cli.summary import summary

    lines = summary(outcome).splitlines()
    (tok_s,) = [line for line in lines if line.strip().startswith("tok/s")]
    assert "[" not in tok_s and "(no interval: fewer than 3 cycles), CV " in tok_s


def test_interval_of_a_positive_figure_is_never_below_zero(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    # Gross 100, 3000 and 100 J: a linear J/token interval would reach far below zero.
    counter = [0.0, 30.0, 100.0, 200.0, 300.0, 3300.0, 3400.0, 3500.0]
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    outcome = _run(tmp_path, 3, counter, mlflow=True, tracking_uri=uri)
    assert outcome.run_id is not None
    metrics = MlflowClient(uri).get_run(outcome.run_id).data.metrics
    low, high = (metrics[f"energy/per_output_token_j_ci95_{side}"] for side in ("low", "high"))
    per_token = [5.0, 150.0, 5.0]
    linear_half = 4.302653 * statistics.stdev(per_token) / math.sqrt(3)
    assert statistics.mean(per_token) - linear_half < 0  # what the linear rule would have published
    assert 0 < low < 5.0 < 150.0 < high
    for key in ("time/cycle_s", "throughput/output_tokens_per_s", "energy/net_per_output_token_j"):
        assert metrics[f"{key}_ci95_low"] <= metrics[f"{key}_ci95_high"]
    assert metrics["time/cycle_s_ci95_low"] > 0 and metrics["throughput/output_tokens_per_s_ci95_low"] > 0


def test_latency_comes_from_per_step_timings(tmp_path: Path) -> None:
    r = _run(tmp_path, 2, COUNTER[:6]).result
    lat = r.latency
    assert lat is not None
    # FakeBackend: 0.004 s prefill and 0.001 s per decode step; 3 batches x 2 cycles, 4 new tokens each
    assert lat.ttft_p50_s == pytest.approx(0.004) and lat.itl_p50_s == pytest.approx(0.001)
    assert lat.steps == 6 * 3 and lat.prefill_s == pytest.approx(6 * 0.004)
    assert r.mlflow_metrics()["latency/itl_p50_s"] == 0.001


def _warm(tmp_path: Path, on_generate: object, **kw: object) -> object:
    cfg = ExperimentConfig.model_validate(
        {"n": 4, "batch_size": 2, "max_input_tokens": 4, "max_output_tokens": 3, "mlflow": False,
         "output_dir": str(tmp_path / "o"), **kw}
    )  # fmt: skip
    backend = FakeBackend(on_generate=on_generate)  # type: ignore[arg-type]
    return execute(cfg, backend=backend, store_probe=lambda c: None).result.warmup  # type: ignore[attr-defined]


def test_fixed_warmup_is_recorded(tmp_path: Path) -> None:
    w = _warm(tmp_path, None, warmup_batches=2)
    assert w.batches == 2 and len(w.latencies_s) == 2 and w.settled is None  # type: ignore[attr-defined]


def test_warmup_runs_until_latency_settles(tmp_path: Path) -> None:
    import time

    delays = iter([0.3, 0.15, 0.08, 0.08, 0.08, 0.08] + [0.08] * 20)
    w = _warm(tmp_path, lambda: time.sleep(next(delays)), warmup_batches=1, warmup_settle_cv_pct=20.0)
    # 0.3, 0.15 vary; three 0.08 s batches settle (sleep jitter is ms): stops near batch 6, before the cap
    assert w.settled is True and 5 <= w.batches <= 8, w  # type: ignore[attr-defined]


def test_warmup_that_never_settles_stops_at_the_cap(tmp_path: Path) -> None:
    import time

    delays = iter([0.001, 0.03] * 10)
    w = _warm(tmp_path, lambda: time.sleep(next(delays)), warmup_settle_cv_pct=1.0, warmup_max_batches=5)
    assert w.settled is False and w.batches == 5  # type: ignore[attr-defined]


def test_two_gpus_are_measured_apart_and_sum_to_the_total(tmp_path: Path) -> None:
    cfg = ExperimentConfig(n=4, batch_size=2, max_input_tokens=4, max_output_tokens=3, cycles=2,
                           baseline_s=0.02, sampling_interval_s=0.005, output_dir=str(tmp_path / "o"),
                           mlflow=False)  # fmt: skip
    gpu0 = FakeDevice(cuda_index=0, uuid="GPU-a", energy_script=[0.0, 5.0, 10.0, 410.0, 500.0, 880.0])
    gpu1 = FakeDevice(cuda_index=1, uuid="GPU-b", energy_script=[0.0, 4.0, 10.0, 210.0, 300.0, 520.0])
    ids = [CUDA0, CudaDeviceId(cuda_index=1, uuid="GPU-b", pci_bus_id=None)]
    backend = FakeBackend(device="cuda", cuda_devices=ids)
    gpus = lambda i: GpuSet([gpu0, gpu1], "580")  # noqa: E731
    r = execute(cfg, backend=backend, gpus=gpus, store_probe=lambda c: None).result
    assert r.energy is not None and [g.gross_j for g in r.energy.per_gpu] == [400.0 + 380.0, 200.0 + 220.0]
    assert r.total_energy_j == 780.0 + 420.0 == sum(g.gross_j for g in r.energy.per_gpu)
    assert [x.gross_j for x in r.cycles.records] == [600.0, 600.0]  # type: ignore[union-attr]
    metrics = r.mlflow_metrics()
    assert (metrics["energy/gpu0_j"], metrics["energy/gpu1_j"], metrics["energy/total_j"]) == (
        780.0,
        420.0,
        1200.0,
    )


def test_phase_energy_is_apportioned_by_the_trace() -> None:
    from llem_mlflow.figures import phases
    from llem_mlflow.measure.trace import PowerTrace, TraceSample
    from llem_mlflow.protocols import BatchStats

    # 1 s window at t=0..1; power 400 W for the samples before t=0.1 (prefill), 200 W after; every 10 ms
    samples = [
        TraceSample(timestamp_s=i / 100, gpu=0, power_w=400.0 if i < 10 else 200.0) for i in range(101)
    ]
    batch = BatchStats(input_tokens=8, output_tokens=8, padded_input_len=8, new_tokens=9, batch_size=1,
                       prefill_s=0.1, decode_step_s=(0.1,) * 8)  # fmt: skip
    spans = phases.batch_spans([0.0], [batch])
    assert (
        spans is not None and spans.prefill == [(0.0, 0.1)] and spans.decode[0] == pytest.approx((0.1, 0.9))
    )
    split = phases.split_energy(210.0, PowerTrace(0.01, samples), [0], [(0.0, 1.0)], spans)
    assert split is not None
    # By hand. Window trace J (trapezoids): 9 x 10 ms at 400 W = 36, 10 ms from 400 to 200 W = 3,
    # 90 x 10 ms at 200 W = 180: 219 J. Prefill: 0.1 s x the sample nearest its middle (0.05 s: 400 W)
    # = 40 J; decode: 0.8 s x the sample nearest 0.5 s (200 W) = 160 J. Scale: counter 210 J / 219 J.
    assert split.prefill_j == pytest.approx(40.0 * 210.0 / 219.0, rel=1e-9)  # 38.356 J
    assert split.decode_j == pytest.approx(160.0 * 210.0 / 219.0, rel=1e-9)  # 153.425 J
    assert split.other_j == pytest.approx(210.0 * 19.0 / 219.0, rel=1e-9)  # the 19 J of 219 outside them
    assert (split.prefill_s, split.decode_s) == pytest.approx((0.1, 0.8))
    untimed = BatchStats(input_tokens=1, output_tokens=1, padded_input_len=1, new_tokens=1, batch_size=1)
    assert phases.batch_spans([0.0], [untimed]) is None


def _flat(gpu: int, power_w: float) -> list[TraceSample]:
    return [TraceSample(timestamp_s=i / 10, gpu=gpu, power_w=power_w) for i in range(11)]


def test_phase_split_sums_gpus_and_scales_down_phases_that_exceed_the_window() -> None:
    from llem_mlflow.figures.phases import PhaseSpans, split_energy

    # Two GPUs at 100 W and 300 W over [0, 1]: window trace 400 J. Prefill 0.25 s -> 25 + 75 = 100 J,
    # decode 0.5 s -> 50 + 150 = 200 J; counter 800 J is twice the trace: 200, 400 and 200 J other.
    two = PowerTrace(0.1, [*_flat(0, 100.0), *_flat(1, 300.0)])
    split = split_energy(800.0, two, [0, 1], [(0.0, 1.0)], PhaseSpans([(0.0, 0.25)], [(0.25, 0.75)]))
    assert split is not None
    assert (split.prefill_j, split.decode_j, split.other_j) == pytest.approx((200.0, 400.0, 200.0))
    # Overlapping spans worth 60 + 60 J of trace against a 100 J window: scaled by 90 / 120, no rest.
    one = PowerTrace(0.1, _flat(0, 100.0))
    split = split_energy(90.0, one, [0], [(0.0, 1.0)], PhaseSpans([(0.0, 0.6)], [(0.4, 1.0)]))
    assert split is not None
    assert (split.prefill_j, split.decode_j, split.other_j) == pytest.approx((45.0, 45.0, 0.0))


def test_gpu_run_reports_phase_energy(tmp_path: Path) -> None:
    r = _run(tmp_path, 2, COUNTER[:6], sleep_s=0.03).result
    pe = r.phase_energy
    assert pe is not None and pe.method.startswith("trace-apportioned")
    assert r.cycles is not None and r.total_energy_j == pytest.approx(2020.0)
    # By hand: 2 cycles x 3 batches, each 0.004 s prefill and 3 decode steps of 0.001 s (FakeBackend);
    # spans are epoch seconds, whose float spacing (~0.2 us) sets the tolerance.
    assert (pe.prefill_s, pe.decode_s) == pytest.approx((6 * 0.004, 6 * 3 * 0.001), abs=1e-5)
    # The trace is a flat 150 W, so each phase's share of the counter is its share of the windows' time.
    measured_s = sum(c.duration_s for c in r.cycles.records)
    assert pe.prefill_j == pytest.approx(2020.0 * pe.prefill_s / measured_s, rel=1e-6)
    assert pe.decode_j == pytest.approx(2020.0 * pe.decode_s / measured_s, rel=1e-6)
    assert pe.other_j == pytest.approx(2020.0 * (1 - (pe.prefill_s + pe.decode_s) / measured_s), rel=1e-6)
