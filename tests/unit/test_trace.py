"""PowerTrace: columns sorted once, windows found by bisection, compact storage, and the old API kept.

Issue 16 item 4: deriving a run was quadratic in its length (every ``for_gpu`` re-sorted every sample,
every ``between`` walked the whole trace) and each sample was a ~220 B object. No timing here: the
tests count comparisons on instrumented floats, count sorts, and measure the trace with tracemalloc.
"""

from __future__ import annotations

import math
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from llem_mlflow.measure import energy, steady
from llem_mlflow.measure import trace_columns as trace_module
from llem_mlflow.measure.energy import CounterWindow
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from llem_mlflow.results import files as artifacts
from tests.fakes import FakeDevice


class Counted(float):
    """A float that counts every comparison and subtraction it takes part in (class-wide)."""

    ops = 0

    def _count(self) -> None:
        Counted.ops += 1

    def __lt__(self, other: Any) -> bool:
        self._count()
        return float(self) < other

    def __le__(self, other: Any) -> bool:
        self._count()
        return float(self) <= other

    def __gt__(self, other: Any) -> bool:
        self._count()
        return float(self) > other

    def __ge__(self, other: Any) -> bool:
        self._count()
        return float(self) >= other

    def __sub__(self, other: Any) -> float:
        self._count()
        return float(self) - other

    def __rsub__(self, other: Any) -> float:
        self._count()
        return other - float(self)


def counted_ops(action: Any) -> int:
    """How many comparisons / subtractions on ``Counted`` values ``action()`` made."""
    Counted.ops = 0
    action()
    return Counted.ops


N = 20_000  # samples per GPU: a linear walk makes >= N comparisons, a bisection ~2 x log2(N) = ~30


def long_trace(gpus: int = 2, n: int = N, stamp: type[float] = float) -> PowerTrace:
    samples = [
        TraceSample(
            timestamp_s=stamp(1000.0 + i * 0.015 + g * 0.001),
            gpu=g,
            power_w=300.0 + g + (i % 7),
            temperature_c=40.0 + i * 0.001 if i % 5 == 0 else None,
            throttle_reasons=0 if i % 5 == 0 else None,
        )
        for i in range(n)
        for g in range(gpus)
    ]
    return PowerTrace(interval_s=0.015, samples=samples)


def test_between_and_counts_bisect_instead_of_walking_the_trace() -> None:
    trace = long_trace()
    lo, hi = Counted(1100.0), Counted(1100.5)
    ops = counted_ops(lambda: trace.between(0, lo, hi))
    assert ops < 100, f"between() made {ops} comparisons for {N} samples: it walks the trace"
    assert [s.timestamp_s for s in trace.between(0, 1100.0, 1100.5)] == [
        1000.0 + i * 0.015 for i in range(N) if 1100.0 <= 1000.0 + i * 0.015 <= 1100.5
    ]
    assert counted_ops(lambda: trace.integrate_j(0, lo, hi)) < 100
    assert counted_ops(lambda: trace.count_between(1, lo, hi)) < 100


def test_a_window_breakdown_costs_lookups_not_a_pass_over_the_trace() -> None:
    """build_breakdown: sparse check, sample count, edge powers (nearest samples) and the integral."""
    trace = long_trace()
    infos = [FakeDevice(cuda_index=g, uuid=f"GPU-fake-{g}").info for g in (0, 1)]
    window = CounterWindow(start_s=Counted(1050.0), end_s=Counted(1200.0), energy_j={0: 4.5e4, 1: 4.6e4})
    idle = CounterWindow(start_s=1000.0, end_s=1010.0, energy_j={0: 3000.0, 1: 3010.0})
    holder: dict[str, Any] = {}
    ops = counted_ops(lambda: holder.update(b=energy.build_breakdown(window, idle, trace, infos)))
    assert ops < 400, f"build_breakdown made {ops} operations on the window edges for {N} samples per GPU"
    breakdown = holder["b"]
    assert breakdown.edge_uncertainty_j is not None and breakdown.per_gpu[0].samples_in_window == 10_000


def test_steady_state_batch_power_reads_each_batch_by_bisection() -> None:
    trace = long_trace()
    starts = [Counted(1000.0 + 1.5 * k) for k in range(150)]  # 150 batches of 1.5 s over the 300 s trace
    holder: dict[str, Any] = {}
    ops = counted_ops(lambda: holder.update(p=steady.batch_power_w(trace, [0, 1], starts, 1225.0)))
    assert ops < 150 * 2 * 2 * 20, f"batch_power_w made {ops} comparisons: every batch walks the trace"
    powers = holder["p"]
    inside = [300.0 + (i % 7) for i in range(N) if 1000.0 <= 1000.0 + i * 0.015 < 1001.5]
    assert powers[0] == pytest.approx(2 * sum(inside) / len(inside) + 1)  # GPU 1 draws 1 W more


def test_out_of_order_appends_are_sorted_once_not_on_every_read(monkeypatch: pytest.MonkeyPatch) -> None:
    sorts: list[int] = []
    original = getattr(trace_module, "_time_order", None)

    def counting(times: Any) -> list[int]:
        sorts.append(len(times))
        assert original is not None
        result: list[int] = original(times)
        return result

    monkeypatch.setattr(trace_module, "_time_order", counting, raising=False)
    rng = random.Random(7)
    ticks = list(range(2000))
    rng.shuffle(ticks)
    samples = [TraceSample(timestamp_s=Counted(float(i)), gpu=0, power_w=float(i)) for i in ticks]
    trace = PowerTrace(interval_s=1.0, samples=samples)
    stamps = counted_ops(
        lambda: [
            (trace.for_gpu(0), trace.between(0, 10.0, 20.0), trace.integrate_j(0, 0.0, 1999.0))
            for _ in range(20)
        ]
    )
    assert stamps == 0, "reads compared the stored samples' timestamps again (a sort per read)"
    assert sorts == [2000], f"expected one sort of the 2000 samples, saw {sorts}"
    assert [s.timestamp_s for s in trace.between(0, 10.0, 20.0)] == [float(i) for i in range(10, 21)]
    assert [s.power_w for s in trace.for_gpu(0)] == [float(i) for i in range(2000)]
    trace.append(TraceSample(timestamp_s=2000.5, gpu=0, power_w=1.0))  # in order: no new sort
    trace.append(TraceSample(timestamp_s=5.5, gpu=0, power_w=2.0))  # out of order: one more, on read
    assert sorts == [2000]
    assert [s.power_w for s in trace.between(0, 5.0, 6.0)] == [5.0, 2.0, 6.0]
    assert trace.nearest_power_w(0, 2000.4) == 1.0
    assert sorts == [2000, 2002]


def test_the_trace_is_stored_as_columns_not_sample_objects() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        trace = PowerTrace(interval_s=0.015)
        for i in range(N):  # as the sampler takes them: slow readings on every 5th tick
            slow = (41.0, 1980.0, 97.0, 8 << 30, 0, 1) if i % 5 == 0 else None
            if hasattr(trace, "add"):
                trace.add(1000.0 + i * 0.015, 0, 300.0, slow)
            else:  # 77c7c5f: no add(); the sampler kept TraceSample objects
                trace.samples.append(TraceSample(1000.0 + i * 0.015, 0, 300.0, *(slow or ())))
        per_sample_b = (tracemalloc.get_traced_memory()[0] - before) / N
    finally:
        tracemalloc.stop()
    assert per_sample_b < 40, f"{per_sample_b:.0f} B per sample per GPU (columns need ~27)"
    assert len(trace.samples) == N and trace.samples[5].temperature_c == 41.0


def test_samples_view_and_lookups_match_their_definitions() -> None:
    rng = random.Random(3)
    samples = [
        TraceSample(
            timestamp_s=round(rng.uniform(0, 50), 1),  # ties on purpose
            gpu=rng.choice([0, 3]),
            power_w=rng.uniform(50, 400),
            temperature_c=rng.choice([None, 40.0]),
            memory_used_b=rng.choice([None, 0, 2**62]),
            throttle_reasons=rng.choice([None, 0, 4]),
            compute_processes=rng.choice([None, 0, 2]),
        )
        for _ in range(600)
    ]
    trace = PowerTrace(0.1, samples)
    by_gpu = {g: sorted((s for s in samples if s.gpu == g), key=lambda s: s.timestamp_s) for g in (0, 3)}
    assert trace.gpus() == [0, 3] and trace.for_gpu(3) == by_gpu[3] and trace.for_gpu(1) == []
    assert list(trace.samples) == by_gpu[0] + by_gpu[3] and trace.samples == by_gpu[0] + by_gpu[3]
    assert trace.samples[-1] == by_gpu[3][-1] and trace.samples[1:3] == by_gpu[0][1:3]
    in_order = PowerTrace(0.1, sorted(samples, key=lambda s: s.timestamp_s))  # stable: ties keep their order
    assert trace == in_order and trace != PowerTrace(0.2, samples)
    for at_s in [-1.0, 0.05, 10.0, 10.05, 25.55, 60.0]:  # the nearest sample, the earlier one on a tie
        assert (
            trace.nearest_power_w(0, at_s) == min(by_gpu[0], key=lambda s: abs(s.timestamp_s - at_s)).power_w
        )
    pts = [(s.timestamp_s, s.power_w) for s in by_gpu[0] if 7.0 <= s.timestamp_s <= 31.0]
    pts = [(7.0, pts[0][1]), *pts, (31.0, pts[-1][1])]
    trapezoid = sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(pts, pts[1:], strict=False))
    assert trace.integrate_j(0, 7.0, 31.0) == trapezoid  # exactly the old formula's float
    window = [s for s in by_gpu[0] if 7.0 <= s.timestamp_s <= 31.0]
    assert trace.readings_between(0, 7.0, 31.0, "throttle_reasons") == [
        s.throttle_reasons for s in window if s.throttle_reasons is not None
    ]
    assert trace.count_between(0, 7.0, 31.0) == len(window)


def test_parquet_round_trip_keeps_every_sample_and_field(tmp_path: Path) -> None:
    samples = [
        TraceSample(5.0, 1, 200.0, 40.0, None, 50.0, 1 << 40, 4, 1),
        TraceSample(1.0, 1, 100.0),
        TraceSample(2.0, 0, 150.0, None, 1400.0, None, None, None, 0),
        TraceSample(3.0, 1, 120.0, math.nan, None, None, None, None, None),  # NaN: "not read", as None
    ]
    trace = PowerTrace(0.5, samples)
    path = artifacts.write_trace_parquet(trace, tmp_path, {"measure": (1.5, 3.0), "idle": (0.0, 5.0)})
    back = artifacts.read_trace_parquet(path)
    assert back == trace and back.for_gpu(1)[2] == samples[0] and back.for_gpu(0) == [samples[2]]
    assert back.for_gpu(1)[1] == TraceSample(3.0, 1, 120.0)
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    assert table.column("phase").to_pylist() == ["measure", "idle", "measure", "idle"]  # GPU 0, then GPU 1
    assert table.column("compute_processes").to_pylist() == [0, None, None, 1]
