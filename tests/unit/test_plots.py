"""plots: power.png of real H200 runs (1 and 3 cycles, 1 and 2 GPUs), none without a trace, compare plots."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from llem_mlflow.figures.stats import summarize
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results import files as artifacts
from llem_mlflow.results import plots
from llem_mlflow.results.compare import compare
from llem_mlflow.results.schema import ExperimentResult

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load(name: str) -> tuple[ExperimentResult, PowerTrace]:
    folder = FIXTURES / name
    return (
        artifacts.read_result_json(folder / artifacts.RESULT_FILE),
        artifacts.read_trace_parquet(folder / artifacts.TRACE_FILE),
    )


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG after checking its signature and that it is not a stub."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 20_000, f"{path.name} is only {len(data)} bytes"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def one_cycle(result: ExperimentResult) -> ExperimentResult:
    """The result with only its first cycle's record (as a `cycles: 1` run reports it)."""
    assert result.cycles is not None
    first = result.cycles.records[0]
    cycles = result.cycles.model_copy(
        update={
            "n": 1,
            "records": [first],
            "duration_s_ci95": summarize([first.duration_s]),
            "output_tokens_per_s_ci95": summarize([first.output_tokens_per_s]),
        }
    )
    return result.model_copy(update={"cycles": cycles})


@pytest.mark.parametrize("name", ["h200_gpt2_bs8", "h200x2_tinyllama_split", "h200_tinyllama_steady"])
def test_power_png_of_real_runs(name: str, tmp_path: Path) -> None:
    result, trace = load(name)
    path = plots.write_power_png(tmp_path, result, trace)
    assert path == tmp_path / plots.POWER_FILE
    width, height = png_size(path)
    assert width > height > 300


def test_power_png_of_a_one_cycle_run(tmp_path: Path) -> None:
    result, trace = load("h200x2_tinyllama_split")
    assert plots._cycle_spans(one_cycle(result)) == [
        (result.cycles.records[0].start_s, result.cycles.records[0].end_s)  # type: ignore[union-attr]
    ]
    png_size(plots.power_figure(one_cycle(result), trace, tmp_path / "one.png") or Path("missing"))


def test_every_cycle_is_shaded(tmp_path: Path) -> None:
    result, _ = load("h200_tinyllama_steady")
    spans = plots._cycle_spans(result)
    assert len(spans) == 3 and all(start < end for start, end in spans)


def test_no_trace_no_figure(cpu_result: ExperimentResult, tmp_path: Path) -> None:
    assert plots.write_power_png(tmp_path, cpu_result, PowerTrace(interval_s=0.015)) is None
    assert list(tmp_path.iterdir()) == []


def test_a_trace_without_energy_still_draws(
    cpu_result: ExperimentResult, sample_result: tuple[ExperimentResult, PowerTrace], tmp_path: Path
) -> None:
    _, trace = sample_result
    png_size(plots.write_power_png(tmp_path, cpu_result, trace) or Path("missing"))
    assert "energy n/a" in plots._power_title(cpu_result)


def test_compare_figure_numeric_and_categorical(tmp_path: Path) -> None:
    bs8, _ = load("h200_gpt2_bs8")
    bs16, _ = load("h200_gpt2_bs16")
    rows = compare([("bs8", None, bs8), ("bs16", None, bs16)]).rows
    png_size(plots.compare_figure(rows, "batch_size", tmp_path / "numeric.png"))
    drawn = plots.draw_compare(rows, "batch_size", tmp_path / "again.png")
    assert drawn.panels == ((plots.J_PER_TOKEN, 2), (plots.TOKENS_PER_S, 2))
    png_size(plots.compare_figure(rows, "run", tmp_path / "categorical.png"))
    assert plots._positions([8, 16]) == ([8.0, 16.0], None)
    assert plots._positions(["bf16", "fp16", "bf16"]) == ([0.0, 1.0, 0.0], ["bf16", "fp16"])


def test_compare_figure_without_energy(cpu_result: ExperimentResult, tmp_path: Path) -> None:
    other = cpu_result.model_copy(update={"avg_tokens_per_second": 80.0})
    rows = compare([("a", None, cpu_result), ("b", None, other)]).rows
    drawn = plots.draw_compare(rows, "run", tmp_path / "cpu.png")
    width, height = png_size(drawn.path)
    assert width > 2 * height  # three panels: no empty J/token panel
    # this sample has no latency block: those panels say "not measured" and hold no point
    assert drawn.panels == ((plots.TOKENS_PER_S, 2), (plots.TTFT_MS, 0), (plots.ITL_MS, 0))


def test_matplotlib_is_imported_only_when_drawing() -> None:
    code = "import sys, llem_mlflow.results.plots, llem_mlflow.results.compare; "
    code += "print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_long_trace_is_drawn_thinned(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """power.png draws at most POWER_MAX_POINTS per GPU (bucket means), so a 24 h trace stays cheap."""
    result, trace = load("h200_gpt2_bs8")
    drawn: list[int] = []
    from matplotlib.axes import Axes

    real_plot = Axes.plot

    def spy(self: Axes, *args: object, **kwargs: object) -> object:
        if str(kwargs.get("label", "")).startswith("GPU ") and "idle" not in str(kwargs.get("label")):
            drawn.append(len(args[0]))  # type: ignore[arg-type]
        return real_plot(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Axes, "plot", spy)
    monkeypatch.setattr(plots, "POWER_MAX_POINTS", 50)
    png_size(plots.write_power_png(tmp_path, result, trace) or Path("missing"))
    held = [len(trace.times_s(g)) for g in trace.gpus()]
    assert all(n > 50 for n in held), held
    assert drawn and all(0 < n <= 50 for n in drawn), drawn
