"""The server scenario's per-cycle figures and their 95 % intervals across cycles
(llem_mlflow/figures/serving_cycles.py, run/derive_serving.cycle_intervals, the MLflow names, the CLI's
cycles block, scripts/serving_table.py); every value below is computed by hand in the comments.

Three cycles (percentiles by linear interpolation: p50 of two values is their mean, p99 = low + 0.99 x gap):

    cycle 0  A  sent 0, first 0.1, chunks 0.1 0.5, end 0.6, 5 tokens: TTFT 0.1, ITL (0.5-0.1)/4 = 0.1, E2E 0.6
             B  sent 0, first 0.3, chunks 0.3 0.7, end 1.0, 3 tokens: TTFT 0.3, ITL (0.7-0.3)/2 = 0.2, E2E 1.0
             F  failed (HTTP 500): in no latency, not completed
             net 10 J over 2 completed: 5 J/request
    cycle 1  A  sent 0, first 0.2, chunks 0.2 0.6, end 0.7, 5 tokens: TTFT 0.2, ITL 0.1, E2E 0.7
             B  sent 0, first 0.4, chunks 0.4 1.0, end 1.1, 4 tokens: TTFT 0.4, ITL 0.2, E2E 1.1
             net 12 J over 2: 6 J/request
    cycle 2  A  sent 0, first 0.3, no chunk, end 0.9, 4 tokens: TTFT 0.3, ITL (0.9-0.3)/3 = 0.2 (end), E2E 0.9
             W  a warm-up request: in nothing
             net -3 J (below idle) over 1: -3 J/request

TTFT p50 0.2, 0.3, 0.3 (mean 0.8/3); TTFT p99 0.298, 0.398, 0.3; ITL p50 0.15, 0.15, 0.2; ITL p99 0.199,
0.199, 0.2; E2E p50 0.8, 0.9, 0.9; net J/request 5, 6, -3 (mean 8/3).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llem_mlflow.cli.summary import _cycle_lines
from llem_mlflow.figures import stats
from llem_mlflow.figures.serving import request_latency
from llem_mlflow.figures.serving_cycles import FIGURES, cycle_figures, serving_intervals
from llem_mlflow.measure.counters import CounterWindow
from llem_mlflow.measure.cycle import Cut, Cycle
from llem_mlflow.measure.served_load import ServedCycle, ServedLoad
from llem_mlflow.measure.stages import Measurement
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results.naming_serving import serving_metrics
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.results.serving import ServingFigures
from llem_mlflow.run.derive_serving import REQUEST_COLUMNS, cycle_intervals
from llem_mlflow.served import RequestRecord
from tests.scripts_loader import load_script

serving_table = load_script("scripts/serving_table.py")


def _r(i: int, first: float, chunks: tuple[float, ...], end: float, tokens: int, cycle: int) -> RequestRecord:
    return RequestRecord(
        i, sent_s=0.0, end_s=end, first_token_s=first, chunk_s=chunks, output_tokens=tokens, cycle=cycle
    )


CYCLES = [
    [
        _r(0, 0.1, (0.1, 0.5), 0.6, 5, 0),
        _r(1, 0.3, (0.3, 0.7), 1.0, 3, 0),
        RequestRecord(2, sent_s=0.0, end_s=0.4, error="HTTP 500: boom", cycle=0),
    ],
    [_r(0, 0.2, (0.2, 0.6), 0.7, 5, 1), _r(1, 0.4, (0.4, 1.0), 1.1, 4, 1)],
    [
        _r(0, 0.3, (), 0.9, 4, 2),
        RequestRecord(1, sent_s=0.0, end_s=5.0, first_token_s=4.0, output_tokens=2, cycle=2, warmup=True),
    ],
]
NETS: list[float | None] = [10.0, 12.0, -3.0]
BY_HAND = {
    "ttft_p50_s": [0.2, 0.3, 0.3],
    "ttft_p99_s": [0.298, 0.398, 0.3],
    "itl_p50_s": [0.15, 0.15, 0.2],
    "itl_p99_s": [0.199, 0.199, 0.2],
    "e2e_p50_s": [0.8, 0.9, 0.9],
    "net_per_request_j": [5.0, 6.0, -3.0],
}


def test_each_cycles_figures_follow_the_request_latency_rules_by_hand() -> None:
    for i, (records, net) in enumerate(zip(CYCLES, NETS, strict=True)):
        got = cycle_figures(records, net)
        assert list(got) == list(FIGURES)
        for name in FIGURES:
            assert got[name] == pytest.approx(BY_HAND[name][i], abs=1e-12), (i, name)
    # the same rules as the pooled figure: one cycle's p50 is request_latency's p50 of that cycle
    assert cycle_figures(CYCLES[0], None)["ttft_p50_s"] == request_latency(CYCLES[0]).ttft_s.p50  # type: ignore[union-attr]


def test_intervals_across_cycles_centre_on_the_mean_of_the_cycle_values() -> None:
    found = serving_intervals(CYCLES, NETS)
    assert found is not None
    for name in FIGURES:
        interval = getattr(found, name)
        assert interval.n == 3 and interval.values == pytest.approx(BY_HAND[name])
        assert interval.mean == pytest.approx(math.fsum(BY_HAND[name]) / 3)
        assert interval.ci95_low is not None and interval.ci95_high is not None
    assert found.ttft_p50_s is not None and found.ttft_p50_s.mean == pytest.approx(0.8 / 3)
    assert found.ttft_p50_s.scale == "log"  # latencies are positive
    per = found.net_per_request_j
    assert per is not None and per.scale == "linear" and per.mean == pytest.approx(8 / 3)
    assert per.ci95_low is not None and per.ci95_low < 0  # a net value below idle keeps its interval
    assert per == stats.summarize([5.0, 6.0, -3.0])


def test_unknown_values_are_left_out_and_one_cycle_gives_no_intervals() -> None:
    found = serving_intervals(CYCLES, [10.0, None, -3.0])
    assert found is not None and found.net_per_request_j is not None
    assert found.net_per_request_j.values == [5.0, -3.0] and found.net_per_request_j.left_out == [1]
    assert found.net_per_request_j.ci95_low is None  # 2 values: no bounds (stats.MIN_INTERVAL_N)
    assert serving_intervals(CYCLES, [None, None, None]).net_per_request_j is None  # type: ignore[union-attr]
    assert serving_intervals(CYCLES[:1], NETS[:1]) is None
    only_failed = [[CYCLES[0][2]], [CYCLES[0][2]]]
    none_done = serving_intervals(only_failed, [1.0, 1.0])
    assert none_done is not None and none_done.ttft_p50_s is None and none_done.net_per_request_j is None
    with pytest.raises(ValueError, match="2 cycles of records but 3"):
        serving_intervals(CYCLES[:2], NETS)


def _measurement(cut_last: bool = False) -> Measurement:
    cycles = [
        Cycle(i, [], CounterWindow(0.0, 1.0, {}), cut=Cut(0, 1, 0.0) if cut_last and i == 3 else None)
        for i in range(4)
    ]
    fourth = [_r(0, 5.0, (5.0, 9.0), 9.0, 2, 3)]  # TTFT 5 s: would move every mean
    served = ServedLoad(2, [ServedCycle(i, list(r)) for i, r in enumerate([*CYCLES, fourth])])
    return Measurement(cycles, None, PowerTrace(0.1), [], served=served)


def test_the_run_leaves_out_a_cycle_cut_short() -> None:
    whole = cycle_intervals(_measurement(), [*NETS, 1.0])
    assert whole is not None and whole.ttft_p50_s is not None and whole.ttft_p50_s.n == 4
    cut = cycle_intervals(_measurement(cut_last=True), [*NETS, 1.0])
    assert cut is not None and cut == serving_intervals(CYCLES, NETS)


OLD_SERVING: dict[str, Any] = {  # a serving block as results before cycle_intervals hold it
    "engine": "transformers", "engine_version": None, "url": "http://127.0.0.1:18123",
    "served_model": "m", "launched": False, "command": None, "load": "closed", "api": "completions",
    "concurrency": 32, "request_rate": None, "requests": 4, "completed": 4, "failed": 0,
    "without_usage": 0, "error_rate": 0.0, "delayed_sends": 0, "warmup_requests": 2, "errors": {},
    "latency": {"requests": 4, "ttft_s": {"n": 4, "p50": 0.16, "p90": 0.27, "p99": 0.58, "mean": 0.2},
                "itl_s": None, "e2e_s": None, "output_tokens_per_s": None},
    "steady": [], "per_request": None, "net_per_request_j": 1.96, "gpu_processes": [], "notes": [],
}  # fmt: skip


def test_an_old_result_without_the_field_loads() -> None:
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "h100_gate" / "gate-b8" / "result.json"
    data = json.loads(fixture.read_text())
    data["serving"] = OLD_SERVING
    result = ExperimentResult.model_validate_json(json.dumps(data))
    assert result.serving is not None and result.serving.cycle_intervals is None
    assert not any("ci95" in k for k in serving_metrics(result.serving))
    with pytest.raises(ValueError, match="extra"):
        ServingFigures.model_validate({**OLD_SERVING, "cycle_interval": None})  # still extra="forbid"


def _figures() -> ServingFigures:
    return ServingFigures.model_validate({**OLD_SERVING, "cycle_intervals": serving_intervals(CYCLES, NETS)})


def test_mlflow_names_carry_each_interval_where_it_has_bounds() -> None:
    metrics = serving_metrics(_figures())
    for key in ("ttft_p50_s", "ttft_p99_s", "itl_p50_s", "itl_p99_s", "e2e_p50_s"):
        assert f"latency/{key}_ci95_low" in metrics and f"latency/{key}_ci95_high" in metrics
    low, _ = metrics["energy/net_per_request_j_ci95_low"]
    high, _ = metrics["energy/net_per_request_j_ci95_high"]
    assert low is not None and high is not None and low < 8 / 3 < high
    two = ServingFigures(**{**OLD_SERVING, "cycle_intervals": serving_intervals(CYCLES[:2], NETS[:2])})
    assert not any("ci95" in k for k in serving_metrics(two))  # 2 cycles: no bounds, no metric


def test_the_cli_cycles_block_shows_ttft_itl_and_j_per_request() -> None:
    cycles = SimpleNamespace(
        n=3, energy_per_output_token_j_ci95=None, net_energy_per_output_token_j_ci95=None,
        output_tokens_per_s_ci95=stats.summarize([10.0, 11.0, 12.0], positive=True),
    )  # fmt: skip
    text = "\n".join(_cycle_lines(SimpleNamespace(cycles=cycles, serving=_figures())))
    ci = _figures().cycle_intervals
    assert ci is not None and ci.ttft_p50_s is not None and ci.ttft_p50_s.ci95_low is not None
    t = ci.ttft_p50_s  # in ms: mean 800/3 = 267
    assert t.ci95_low is not None and t.ci95_high is not None and t.cv_pct is not None
    bounds = f"[{t.ci95_low * 1000:.3g}, {t.ci95_high * 1000:.3g}], CV {t.cv_pct:.2f}%"
    assert f"  TTFT p50 ms   267 {bounds}" in text.splitlines()
    assert "\n  ITL p50 ms    167 [" in text and "\n  net J/request 2.667 [" in text
    old = "\n".join(_cycle_lines(SimpleNamespace(cycles=cycles, serving=ServingFigures(**OLD_SERVING))))
    assert "TTFT" not in old and "tok/s" in old


def _write_run(folder: Path, records: list[list[RequestRecord]], nets: list[float | None]) -> dict[str, Any]:
    """An old server result.json (no cycle_intervals) and its requests.parquet, as the run writes them."""
    rows = [
        {
            "cycle": c, "index": r.index, "sent_s": r.sent_s, "first_token_s": r.first_token_s,
            "end_s": r.end_s, "ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "chunks": len(r.chunk_s),
            "input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "error": r.error, "net_j": None,
        }
        for c, cycle in enumerate(records) for r in cycle if not r.warmup
    ]  # fmt: skip
    assert list(rows[0]) == list(REQUEST_COLUMNS)
    pq.write_table(pa.Table.from_pylist(rows), folder / "requests.parquet")
    cycle_records = [{"index": i, "net_j": n, "partial": None} for i, n in enumerate(nets)]
    cycles = {"n": 3, "records": cycle_records}
    return {"scenario": "server", "model": "m", "config": {}, "serving": dict(OLD_SERVING), "cycles": cycles}


def test_the_table_recomputes_old_results_from_requests_parquet(tmp_path: Path) -> None:
    result = _write_run(tmp_path, CYCLES, NETS)
    found, recomputed = serving_table.cycle_intervals(result, tmp_path)
    assert recomputed
    no_chunks = [[RequestRecord(**{**vars(r), "chunk_s": ()}) for r in c if not r.warmup] for c in CYCLES]
    expected = serving_intervals(no_chunks, NETS)
    assert expected is not None and found == expected.model_dump(mode="json")
    # ITL from end_s, not the last chunk: cycle 0's A is (0.6 - 0.1) / 4 = 0.125, B (1.0 - 0.3) / 2 = 0.35
    assert found["itl_p50_s"]["values"][0] == pytest.approx(0.2375)
    assert found["ttft_p50_s"]["values"] == pytest.approx(BY_HAND["ttft_p50_s"])  # TTFT is exact
    cells = serving_table.row(result, tmp_path)[1]
    assert cells[6].startswith("2.67 [") and cells[9].endswith(" *") and cells[8].startswith("266.7 [")


def test_the_table_uses_the_field_when_there_is_one(tmp_path: Path) -> None:
    result = _write_run(tmp_path, CYCLES, NETS)
    result["serving"]["cycle_intervals"] = _figures().model_dump(mode="json")["cycle_intervals"]
    found, recomputed = serving_table.cycle_intervals(result, tmp_path)
    assert not recomputed and found is not None
    assert found["itl_p50_s"]["values"] == pytest.approx([0.15, 0.15, 0.2])  # the last chunk's rule
    cells = serving_table.row(result, tmp_path)[1]
    assert not cells[9].endswith("*") and cells[9].startswith("166.7 [")
    result["serving"]["cycle_intervals"] = None  # one cycle: the pooled figures
    assert serving_table.row(result, tmp_path)[1][6:9:2] == ["1.96", "160.0 / 580.0"]
