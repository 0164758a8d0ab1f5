"""compare: rows, refusal, n.s. flags (pure), and `llem-mlflow compare` over a real sqlite MLflow store."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import typer
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from llem_mlflow.cli.compare import compare as compare_command
from llem_mlflow.cli.compare import render_table, write_csv, write_json
from llem_mlflow.errors import ConfigError
from llem_mlflow.figures.stats import Interval, summarize
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.compare import (
    BEST,
    NOT_SIGNIFICANT,
    UNKNOWN,
    check_comparable,
    compare,
    energy_band,
    incomparable_reason,
)
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.tracking import recording

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def load(name: str) -> ExperimentResult:
    return artifacts.read_result_json(FIXTURES / name / artifacts.RESULT_FILE)


def scaled(result: ExperimentResult, factor: float) -> ExperimentResult:
    """``result`` with every J/output token (and its cycles' values) multiplied by ``factor``."""
    update: dict[str, object] = {"avg_energy_per_token_j": (result.avg_energy_per_token_j or 0) * factor}
    if result.cycles is not None and result.cycles.energy_per_output_token_j_ci95 is not None:
        values = [v * factor for v in result.cycles.energy_per_output_token_j_ci95.values]
        update["cycles"] = result.cycles.model_copy(
            update={"energy_per_output_token_j_ci95": summarize(values, positive=True)}
        )
    return result.model_copy(update=update)


def flags(*results: ExperimentResult) -> list[str]:
    return [row.significance for row in compare([(f"r{i}", None, r) for i, r in enumerate(results)]).rows]


# ---------------------------------------------------------------- pure logic


def test_rows_hold_the_figures_and_the_differing_settings() -> None:
    bs8, bs16 = load("h200_gpt2_bs8"), load("h200_gpt2_bs16")
    comparison = compare([("bs8", "id8", bs8), ("bs16", "id16", bs16)])
    assert comparison.differing == ["batch_size"]
    assert comparison.first_field() == "batch_size"
    first, second = comparison.rows
    assert (first.settings, second.settings) == ({"batch_size": 8}, {"batch_size": 16})
    assert first.j_per_token.value == bs8.avg_energy_per_token_j
    assert first.j_per_token.low is None  # one cycle: no interval
    assert first.tokens_per_s.value == bs8.avg_tokens_per_second
    assert first.energy_j == bs8.total_energy_j and first.cycles == 1
    assert bs8.energy is not None and bs8.energy.net_j is not None
    assert first.net_j_per_token.value == pytest.approx(bs8.energy.net_j / bs8.output_tokens)
    assert [r.significance for r in comparison.rows] == ["", BEST]  # bs16 is 35 % cheaper


def test_rows_with_cycles_carry_their_intervals() -> None:
    split = load("h200x2_tinyllama_split")
    row = compare([("a", None, split), ("b", None, scaled(split, 2.0))]).rows[0]
    interval = split.cycles.energy_per_output_token_j_ci95  # type: ignore[union-attr]
    assert interval is not None
    # The fixture stored a linear interval; compare shows today's rule: log scale, from the same values.
    today = summarize(interval.values, positive=True)
    assert (row.j_per_token.low, row.j_per_token.high) == (today.ci95_low, today.ci95_high)
    assert row.j_per_token.low == pytest.approx(interval.ci95_low, rel=1e-3)  # +-1.3 %: scales agree
    assert row.cycles == 3 and row.ttft_p50_s == split.latency.ttft_p50_s  # type: ignore[union-attr]
    assert row.tokens_per_s.low is not None


def two_cycles(result: ExperimentResult, per_token: list[float], tok_s: list[float]) -> ExperimentResult:
    """``result`` as an older llem wrote a 2-cycle run: linear intervals, whatever their bounds."""
    assert result.cycles is not None

    def linear(values: list[float]) -> Interval:
        mean, half = sum(values) / 2, 12.706205 * abs(values[0] - values[1]) / 2
        return Interval(values=values, n=2, mean=mean, std=1.0, ci95_low=mean - half, ci95_high=mean + half)

    cycles = result.cycles.model_copy(
        update={
            "n": 2,
            "energy_per_output_token_j_ci95": linear(per_token),
            "output_tokens_per_s_ci95": linear(tok_s),
        }
    )
    value = sum(per_token) / 2
    return result.model_copy(update={"cycles": cycles, "avg_energy_per_token_j": value})


def test_an_old_two_cycle_interval_below_zero_is_not_shown() -> None:
    """Issue 16 item 8: compare showed ``5 [-87, 108]`` from a 2-cycle result."""
    split = load("h200x2_tinyllama_split")
    old = two_cycles(split, [0.2, 0.6], [0.9, 10.0])
    assert old.cycles is not None and old.cycles.output_tokens_per_s_ci95.ci95_low is not None
    assert old.cycles.output_tokens_per_s_ci95.ci95_low < 0  # what the old result holds
    row = compare([("old", None, old), ("new", None, split)]).rows[0]
    assert (row.j_per_token.low, row.j_per_token.high) == (None, None)
    assert (row.tokens_per_s.low, row.tokens_per_s.high) == (None, None)
    assert split.uncertainty is not None and split.uncertainty.gross_j is not None
    band = energy_band(old)  # no interval: the energy uncertainty decides significance
    half = split.uncertainty.gross_j / split.output_tokens
    assert band == (pytest.approx(0.4 - half), pytest.approx(0.4 + half))
    table = render_table(compare([("old", None, old), ("new", None, split)]))
    (old_line,) = [line for line in table.splitlines() if line.lstrip().startswith("old")]
    assert "[-" not in old_line and ", -" not in old_line  # no bound below zero is printed


def test_table_keeps_significant_figures() -> None:
    """Issue 16 item 9: tok/s 0.93 was printed as "1"."""
    bs8, bs16 = load("h200_gpt2_bs8"), load("h200_gpt2_bs16")
    slow = bs8.model_copy(update={"avg_tokens_per_second": 0.93})
    fast = bs16.model_copy(update={"avg_tokens_per_second": 12_345.6})
    table = render_table(compare([("slow", None, slow), ("fast", None, fast)]))
    (slow_line,) = [line for line in table.splitlines() if line.lstrip().startswith("slow")]
    assert " 0.930 " in slow_line
    (fast_line,) = [line for line in table.splitlines() if line.lstrip().startswith("fast")]
    assert " 12,346 " in fast_line


def test_no_differing_settings_plots_against_the_run() -> None:
    bs8 = load("h200_gpt2_bs8")
    assert compare([("a", None, bs8), ("b", None, bs8)]).first_field() == "run"


@pytest.mark.parametrize(
    ("update", "named"),
    [
        ({"measurement_methodology": "steady_state"}, "measurement_methodology"),
        ({"energy_source": "none", "total_energy_j": None}, "energy source"),
    ],
)
def test_refuses_runs_that_measured_differently(update: dict[str, object], named: str) -> None:
    bs8 = load("h200_gpt2_bs8")
    other = bs8.model_copy(update=update)
    with pytest.raises(ConfigError, match=named) as caught:
        check_comparable([bs8, other], force=False)
    assert "--force" in str(caught.value) and "\n" not in str(caught.value)
    check_comparable([bs8, other], force=True)


def test_refuses_another_hash_recipe_unless_forced() -> None:
    results = [load("h200_gpt2_bs8"), load("h200x2_tinyllama_split")]
    assert incomparable_reason(results) == (
        "the runs differ in hash recipe (2, 4), so their J/token are not comparable"
    )
    with pytest.raises(ConfigError, match="hash recipe"):
        check_comparable(results, force=False)
    check_comparable(results, force=True)


def test_other_workloads_compare_per_token() -> None:
    bs8 = load("h200_gpt2_bs8")
    assert bs8.resolved is not None
    longer = bs8.resolved.model_copy(update={"max_output_tokens": 256, "dataset": "sha256:00"})
    check_comparable([bs8, bs8.model_copy(update={"resolved": longer})], force=False)


def test_one_run_is_not_a_comparison() -> None:
    with pytest.raises(ConfigError, match="at least 2 runs"):
        check_comparable([load("h200_gpt2_bs8")], force=True)


def test_ns_with_cycles_fires_when_the_intervals_overlap() -> None:
    split = load("h200x2_tinyllama_split")  # 95 % interval 0.1188-0.1221 J/token (+-1.3 %)
    assert flags(split, scaled(split, 1.01)) == [BEST, NOT_SIGNIFICANT]
    assert flags(split, scaled(split, 1.05)) == [BEST, ""]
    assert flags(scaled(split, 1.05), split) == ["", BEST]


def test_ns_with_one_cycle_uses_the_energy_uncertainty() -> None:
    bs8 = load("h200_gpt2_bs8")  # no uncertainty block: +- edge uncertainty 25.3 J / 8192 tokens
    band = energy_band(bs8)
    assert band is not None and band[1] - band[0] == pytest.approx(2 * 25.2893 / bs8.output_tokens)
    assert flags(bs8, scaled(bs8, 1.02)) == [BEST, NOT_SIGNIFICANT]
    assert flags(bs8, scaled(bs8, 1.10)) == [BEST, ""]


def test_ns_with_one_cycle_prefers_the_uncertainty_block() -> None:
    split = load("h200x2_tinyllama_split")
    assert split.uncertainty is not None and split.uncertainty.gross_j is not None
    single = split.model_copy(update={"cycles": None})
    band = energy_band(single)
    assert band is not None
    assert band[1] - band[0] == pytest.approx(2 * split.uncertainty.gross_j / split.output_tokens)


def test_without_energy_significance_is_unknown(cpu_result: ExperimentResult) -> None:
    assert flags(cpu_result, cpu_result) == [UNKNOWN, UNKNOWN]


def test_table_csv_and_json(tmp_path: Path) -> None:
    split = load("h200x2_tinyllama_split")
    bigger = split.resolved.model_copy(update={"batch_size": 128})  # type: ignore[union-attr]
    other = scaled(split, 1.01).model_copy(update={"resolved": bigger})
    comparison = compare([("bs64", "a1", split), ("bs128", "b2", other)])
    table = render_table(comparison)
    assert "batch_size" in table and "bs128" in table and NOT_SIGNIFICANT in table
    assert "0.1205 [0.1188, 0.1221]" in table
    write_csv(comparison, tmp_path / "rows.csv")
    rows = list(csv.DictReader((tmp_path / "rows.csv").open()))
    assert [(r["run"], r["batch_size"], r["significance"]) for r in rows] == [
        ("bs64", "64", BEST),
        ("bs128", "128", NOT_SIGNIFICANT),
    ]
    write_json(comparison, tmp_path / "rows.json")
    data = json.loads((tmp_path / "rows.json").read_text())
    assert data["differing"] == ["batch_size"] and data["rows"][1]["cycles"] == 3


# ---------------------------------------------------------------- the command, on a real store


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("compare")(compare_command)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps `compare` a named subcommand, as in cli.py
        """Nothing."""

    return app


def logged(name: str, tmp_path: Path, experiment: str) -> str:
    """Copy a fixture folder, log it with ``recording.log_folder``; the run id."""
    folder = shutil.copytree(FIXTURES / name, tmp_path / name)
    return recording.log_folder(folder, None, experiment, None).run_id


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli(), ["compare", *args])
    return result.exit_code, result.stdout, result.stderr


def test_compare_an_experiment_end_to_end(tmp_path: Path) -> None:
    logged("h200_gpt2_bs8", tmp_path, "sweep")
    logged("h200_gpt2_bs16", tmp_path, "sweep")
    out_csv, out_png = tmp_path / "rows.csv", tmp_path / "rows.png"

    code, stdout, stderr = invoke(
        "--experiment-name", "sweep", "--csv", str(out_csv), "--figure", str(out_png)
    )

    assert code == 0, stderr
    assert "gpt2-bs8-bf16" in stdout and "gpt2-bs16-bf16" in stdout and "batch_size" in stdout
    per_token = [f"{load(n).avg_energy_per_token_j:.4g}" for n in ("h200_gpt2_bs8", "h200_gpt2_bs16")]
    assert all(text in stdout for text in per_token) and BEST in stdout
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["run"], r["batch_size"]) for r in rows] == [("gpt2-bs8-bf16", "8"), ("gpt2-bs16-bf16", "16")]
    assert out_png.read_bytes()[:4] == b"\x89PNG" and out_png.stat().st_size > 20_000


def test_compare_run_ids_and_children_of_a_parent(tmp_path: Path) -> None:
    first = logged("h200_gpt2_bs8", tmp_path, "mixed")
    second = logged("h200_gpt2_bs16", tmp_path, "mixed")
    code, stdout, _ = invoke(second, first)
    assert code == 0 and stdout.index("gpt2-bs16-bf16") < stdout.index("gpt2-bs8-bf16")

    client = MlflowClient()
    parent = client.create_run(client.get_experiment_by_name("mixed").experiment_id).info.run_id  # type: ignore[union-attr]
    client.set_tag(first, "mlflow.parentRunId", parent)
    assert invoke("--parent", parent)[0] == 2  # one child: nothing to compare
    client.set_tag(second, "mlflow.parentRunId", parent)
    code, stdout, _ = invoke("--parent", parent)
    assert code == 0 and "gpt2-bs8-bf16" in stdout


def test_compare_refuses_another_recipe_unless_forced(tmp_path: Path) -> None:
    logged("h200_gpt2_bs8", tmp_path, "two-recipes")
    logged("h200x2_tinyllama_split", tmp_path, "two-recipes")

    code, stdout, stderr = invoke("--experiment-name", "two-recipes")
    assert code == 2 and stdout == ""
    assert stderr.strip().splitlines() == [
        "error: the runs differ in hash recipe (2, 4), so their J/token are not comparable; "
        "pass --force to compare them anyway"
    ]

    code, stdout, stderr = invoke("--experiment-name", "two-recipes", "--force")
    assert code == 0 and "compared anyway" in stderr and "TinyLlama" in stdout


def test_compare_names_a_missing_experiment_or_run() -> None:
    code, _, stderr = invoke("--experiment-name", "nowhere")
    assert code == 2 and "no MLflow experiment named 'nowhere'" in stderr
    code, _, stderr = invoke("0123456789abcdef0123456789abcdef")
    assert code == 2 and "is not in the MLflow store" in stderr
