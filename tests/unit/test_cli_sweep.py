"""`llem-mlflow sweep`: end to end on the real tiny model (CPU, random weights), errors, MLproject entry."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner, Result

from llem_mlflow.cli.app import app
from llem_mlflow.tracking.client import PARENT_RUN_TAG

ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def _sweep_file(tmp_path: Path, section: object) -> Path:
    path = tmp_path / "sweep.yaml"
    data = {
        "model": "llem/tiny-gpt2", "weights": "random", "device": "cpu", "n": 2, "max_input_tokens": 4,
        "max_output_tokens": 2, "baseline_s": 0.0, "sweep": section,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_sweep_on_the_tiny_model_end_to_end(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, {"batch_size": [1, 2]})
    out = tmp_path / "results"
    args = ("sweep", str(path), "--output-dir", str(out), "--experiment-name", "cli-sweep")
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    exp = client.get_experiment_by_name("cli-sweep")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if PARENT_RUN_TAG not in r.data.tags]
    children = [r for r in runs if r.data.tags.get(PARENT_RUN_TAG) == parent.info.run_id]
    assert parent.info.run_name == "sweep-tiny-gpt2-2" and parent.info.status == "FINISHED"
    assert sorted(json.loads(c.data.tags["llem.sweep.point"])["batch_size"] for c in children) == [1, 2]
    assert {c.info.status for c in children} == {"FINISHED"}
    assert all(c.data.metrics["tokens/output"] == 4 for c in children)
    assert "mlflow parent" in result.stdout and parent.info.run_id in result.stdout
    assert (out / f"sweep-{parent.data.tags['llem.sweep.id']}" / "sweep_summary.md").is_file()
    assert len([d for d in out.iterdir() if (d / "result.json").is_file()]) == 2
    assert result.stderr.count("loading llem/tiny-gpt2") == 1  # one load serves both points
    assert result.stderr.count("reusing loaded llem/tiny-gpt2") == 1
    assert "compare.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert again.stdout.count("done earlier: figures of the earlier attempt (ended ") == 2
    assert len(client.search_runs([exp.experiment_id])) == 3


def test_an_invalid_point_is_listed_and_skipped(tmp_path: Path) -> None:
    path = _sweep_file(tmp_path, [{"batch_size": 0}])
    result = invoke("sweep", str(path), "--no-mlflow", "--output-dir", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "invalid: invalid config: batch_size" in result.stdout
    assert "not logged (--no-mlflow)" in result.stdout


def test_a_bad_sweep_section_exits_2_naming_the_field(tmp_path: Path) -> None:
    result = invoke("sweep", str(_sweep_file(tmp_path, {"colour": [1, 2]})))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: sweep.colour: unknown field 'colour'")
    assert "Traceback" not in result.output


def test_a_file_without_a_sweep_section_or_no_file_exits_2(tmp_path: Path) -> None:
    plain = tmp_path / "plain.yaml"
    plain.write_text("model: gpt2\n")
    assert invoke("sweep", str(plain)).exit_code == 2
    assert "no sweep: section" in invoke("sweep", str(plain)).stderr
    assert invoke("sweep").exit_code == 2


def test_mlproject_declares_the_sweep_entry_point() -> None:
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert project["entry_points"]["sweep"]["command"] == "llem-mlflow sweep"
    assert project["entry_points"]["main"]["command"] == "llem-mlflow run"
