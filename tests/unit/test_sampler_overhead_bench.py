"""benchmarks/sampler_overhead.py: the amplified estimate of the buffer sampler's overhead (a line through the
origin of paired ratio - 1 against buffer reads per second, scaled to the product's read rate), the
conditions it runs, the reads it counts, and one ``--smoke`` run end to end on the CPU fakes."""

from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.fakes import FakeDevice, FakePowerBuffer
from tests.scripts_loader import load_script

so = load_script("benchmarks/sampler_overhead.py")  # its helpers (bench_common...) import beside it
stats = sys.modules["sampler_stats"]  # the statistics it imports: ``amplified`` reads its globals there

PERIODS = (1.0, 0.1, 0.01)  # the product's period and 10x, 100x its reads
CONDS = [so.Condition(so.buffer_name(p), "buffer", p) for p in PERIODS]


def exact_run(c: float, reads: int, none_s: float) -> Any:
    """A buffer run of ``reads`` reads whose time / ``none_s`` is exactly 1 + c * reads per second."""
    wall_s = none_s * (1 + math.sqrt(1 + 4 * c * reads / none_s)) / 2  # w = none_s * (1 + c * reads / w)
    return so.Run("buffer", wall_s, wall_s, buffer_reads=reads)


def blocks_of(c: float, pairs: int = 8, noise: float = 0.0, intercept: float = 0.0) -> list[dict[Any, Any]]:
    """ABBA-like blocks of ~1 s runs: ``none`` and one buffer run per period (1 / period reads a second)."""
    rng = random.Random(1)
    blocks = []
    for _ in range(pairs):
        none_s = rng.uniform(0.9, 1.1)  # a drift shared by the block
        block: dict[Any, Any] = {None: so.Run(None, none_s * (1 + rng.gauss(0, noise)), none_s)}
        for cond in CONDS:
            run = exact_run(c, round(1 / cond.buffer_period_s), none_s)
            run.wall_s *= 1 + intercept + rng.gauss(0, noise)
            block[cond.name] = run
        blocks.append(block)
    return blocks


def test_the_fit_is_least_squares_through_the_origin() -> None:
    assert so.fit_through_origin([(0.0, 0.0), (1.0, 0.002), (10.0, 0.02), (100.0, 0.2)]) == pytest.approx(
        0.002
    )
    # y = 0.01 at x = 1 and 2: through the origin c = (0.01 + 0.02) / (1 + 4); a fit with an intercept gives 0
    assert so.fit_through_origin([(1.0, 0.01), (2.0, 0.01)]) == pytest.approx(0.006)
    assert so.fit_through_origin([(0.0, 0.05), (0.0, -0.01)]) is None  # no reads: no slope


def test_exact_ratios_give_back_c_and_the_product_overhead_at_one_read_a_second() -> None:
    c = 2e-4  # 0.02 % per read/s: 0.02 % at the product's 1 read/s, 2 % at 100 reads/s
    fit = so.amplified(blocks_of(c), CONDS)
    assert fit is not None
    assert fit["slope_per_read_per_s"] == pytest.approx(c, rel=1e-9)
    assert fit["overhead_pct_amplified"] == pytest.approx(100 * c / so.BUFFER_READ_PERIOD_S, rel=1e-9)
    low, high = fit["overhead_pct_amplified_ci95"]
    assert low == pytest.approx(0.02, rel=1e-6) and high == pytest.approx(0.02, rel=1e-6)
    assert fit["meets_ratio_target_amplified"] is True
    assert (fit["pairs"], fit["points"]) == (8, 24)


def test_the_product_overhead_is_scaled_by_the_products_read_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats, "BUFFER_READ_PERIOD_S", 0.5)  # a product reading twice a second
    c = 3e-3
    fit = so.amplified(blocks_of(c), CONDS)
    assert fit is not None
    assert fit["overhead_pct_amplified"] == pytest.approx(100 * c * 2, rel=1e-9)  # 0.6 %: not 0.3 %
    assert fit["meets_ratio_target_amplified"] is False


def test_with_noise_the_block_bootstrap_interval_holds_c_and_scales_to_the_product() -> None:
    c = 1e-3  # 10 % at 100 reads/s, against +-5 % run-to-run noise
    fit = so.amplified(blocks_of(c, pairs=40, noise=0.05), CONDS)
    assert fit is not None
    low, high = fit["slope_ci95"]
    assert low < c < high and high - low < c  # resolved well inside a factor of two
    assert fit["slope_per_read_per_s"] != pytest.approx(c, rel=1e-6)  # the noise is really there
    assert fit["overhead_pct_amplified_ci95"] == pytest.approx((100 * low, 100 * high))
    assert so.amplified(blocks_of(c, pairs=40, noise=0.05), CONDS) == fit  # seeded: the same interval
    assert so.amplified(blocks_of(c, pairs=5), CONDS)["slope_ci95"] is None  # under 6 blocks: none


def test_the_linearity_table_puts_each_periods_median_beside_the_model() -> None:
    fit = so.amplified(blocks_of(2e-4), CONDS)
    assert fit is not None
    rows = {r["condition"]: r for r in fit["linearity"]}
    assert list(rows) == ["buffer", "buffer@0.1", "buffer@0.01"]
    for row, period in zip(rows.values(), PERIODS, strict=True):
        assert row["buffer_period_s"] == period
        assert row["reads_per_s_median"] == pytest.approx(1 / period, rel=0.15)  # runs last 0.9-1.1 s
        assert row["overhead_pct_model"] == pytest.approx(row["overhead_pct_median"], rel=1e-9)
    # a cost that does not scale with reads (+0.3 % on every buffer run) is what the check shows
    skewed = so.amplified(blocks_of(2e-4, intercept=0.003), CONDS)
    assert skewed is not None
    product = skewed["linearity"][0]
    assert product["overhead_pct_median"] > product["overhead_pct_model"] + 0.25


def test_conditions_one_per_buffer_period_and_no_estimate_without_a_faster_one() -> None:
    conds = so.conditions("poll,buffer", "1.0,0.1,0.01")
    assert [(c.name, c.mode, c.buffer_period_s) for c in conds] == [
        ("poll", "poll", 1.0),
        ("buffer", "buffer", 1.0),
        ("buffer@0.1", "buffer", 0.1),
        ("buffer@0.01", "buffer", 0.01),
    ]
    assert [c.name for c in so.conditions("poll,buffer", "1")] == ["poll", "buffer"]
    for bad in ("1.0,1", "0", "x"):
        with pytest.raises(SystemExit):
            so.conditions("buffer", bad)
    only_product = [{k: v for k, v in b.items() if k in (None, "buffer")} for b in blocks_of(2e-4)]
    assert so.amplified(only_product, CONDS[:1]) is None  # the default: nothing amplified, no estimate


def test_blocks_run_every_condition_in_abba_order(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(work: Any, n: int, devices: Any, cond: Any, interval_s: float) -> Any:
        return so.Run(None if cond is None else cond.mode, 1.0, 1.0, buffer_reads=0)

    monkeypatch.setattr(so, "one_run", fake_run)
    args = SimpleNamespace(
        conditions=so.conditions("poll,buffer", "1.0,0.1"), interval_s=0.015, budget_s=0, pairs=2, max_pairs=2
    )
    blocks = so.run_blocks(lambda n: None, 1, [], args)
    assert [list(b) for b in blocks] == [
        [None, "poll", "buffer", "buffer@0.1"],
        ["buffer@0.1", "buffer", "poll", None],
    ]


def test_the_timed_sampler_counts_its_loops_reads_not_the_last_one() -> None:
    device = FakeDevice(power_buffer=FakePowerBuffer.live(150.0))
    sampler = so.TimedSampler([device], 0.015, mode="buffer", buffer_period_s=0.01)
    sampler.start()
    time.sleep(0.2)
    sampler.stop()
    assert sampler.buffer_reads >= 1  # ~20 in 0.2 s; a loaded host may wake the thread less often
    assert sampler.buffer_reads == device.buffer_reads - 2  # less the read that opened it and stop()'s


def test_smoke_run_writes_the_amplified_estimate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in ("HF_HUB_OFFLINE", "MLFLOW_DISABLE_TELEMETRY", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        monkeypatch.setenv(key, "1")  # restored afterwards (main sets them unless set)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    out = tmp_path / "sampler_overhead.json"
    monkeypatch.setattr(sys, "argv", ["sampler_overhead.py", "--smoke", "--run-s", "0.03", "--out", str(out)])
    so.main()
    data = json.loads(out.read_text())
    rows = {s["mode"]: s for s in data["workloads"]}
    assert list(rows) == ["poll", "buffer", "buffer@0.02"]
    assert rows["buffer@0.02"]["buffer_reads_per_s_median"] > rows["buffer"]["buffer_reads_per_s_median"]
    assert rows["poll"]["buffer_reads_per_s_median"] == 0 and rows["poll"]["overhead_pct_amplified"] is None
    (fit,) = data["amplified"]
    assert fit["workload"] == "cpu" and fit["pairs"] == 6 and fit["slope_ci95"] is not None
    assert [r["condition"] for r in fit["linearity"]] == ["buffer", "buffer@0.02"]
    assert rows["buffer"]["meets_ratio_target_amplified"] == fit["meets_ratio_target_amplified"]
    assert rows["buffer"]["overhead_pct_amplified"] == fit["overhead_pct_amplified"]
    assert "Amplified estimate" in data["table"]
