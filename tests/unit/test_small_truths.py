"""Small truths (issue 16, item 9): what a CPU run's files say about energy, the README's promise about
power.png, and config errors in the project's own words (no pydantic "Value error," prefix)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from llem_mlflow.cli.app import app
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.errors import ConfigError
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from llem_mlflow.results import files as artifacts
from llem_mlflow.run.execute import execute
from tests.fakes import FakeBackend

README = Path(__file__).resolve().parents[2] / "README.md"


def _cpu_run(tmp_path: Path) -> Path:
    workload = {"n": 2, "batch_size": 2, "max_input_tokens": 4, "max_output_tokens": 2, "baseline_s": 0.0}
    cfg = ExperimentConfig.model_validate({**workload, "output_dir": str(tmp_path), "mlflow": False})
    return execute(cfg, backend=FakeBackend()).result_dir


def test_a_cpu_runs_empty_trace_file_says_why_it_is_empty(tmp_path: Path) -> None:
    folder = _cpu_run(tmp_path)
    table = pq.read_table(folder / artifacts.TRACE_FILE)
    assert table.num_rows == 0
    note = (table.schema.metadata or {}).get(b"llem.note", b"").decode()
    assert note.startswith("no GPU power samples: energy not measured"), note
    assert artifacts.read_trace_parquet(folder / artifacts.TRACE_FILE).gpus() == []  # still readable


def test_a_trace_with_samples_has_no_note(tmp_path: Path) -> None:
    trace = PowerTrace(interval_s=0.1, samples=[TraceSample(timestamp_s=1.0, gpu=0, power_w=100.0)])
    path = artifacts.write_trace_parquet(trace, tmp_path, {})
    assert b"llem.note" not in (pq.read_schema(path).metadata or {})


def test_the_readme_does_not_promise_power_png_for_every_run(tmp_path: Path) -> None:
    folder = _cpu_run(tmp_path)
    assert not (folder / "power.png").exists()  # a CPU run draws no figure: no power trace
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "Every run also logs `power.png`" not in text
    assert "a CPU run has no power trace, so no figure" in text


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dataset": "prompts.txt"}, "dataset"),
        ({"compile": "default"}, "config"),
        ({"n": True}, "n"),
    ],
)
def test_config_errors_carry_no_pydantic_prefix(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(**overrides)
    message = str(caught.value)
    assert message.startswith(f"invalid config: {field}: ") and "Value error" not in message, message


def test_the_cli_error_for_a_bad_value_has_no_pydantic_prefix() -> None:
    result = CliRunner().invoke(app, ["config", "--dataset", "prompts.txt"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: invalid config: dataset: must be 'synthetic' or a path")
    assert "Value error" not in result.stderr
