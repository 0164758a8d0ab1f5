"""The CLI, the Python API, the examples and the README's `mlflow run` land in one default experiment."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.tracking.client import DEFAULT_EXPERIMENT, resolve_experiment_name

ROOT = Path(__file__).resolve().parents[2]


def test_default_experiment_is_llem_mlflow() -> None:
    assert DEFAULT_EXPERIMENT == "llem-mlflow"
    assert ExperimentConfig().experiment_name is None  # so the default applies
    assert resolve_experiment_name(None) == "llem-mlflow"


def test_examples_do_not_pick_their_own_experiment() -> None:
    for path in ROOT.glob("examples/*.yaml"):
        assert "experiment_name" not in (yaml.safe_load(path.read_text()) or {}), path
    for path in ROOT.glob("examples/*.py"):
        assert "experiment_name=" not in path.read_text(), path


def test_every_documented_mlflow_run_names_the_default_experiment() -> None:
    texts = [(ROOT / "README.md").read_text(), (ROOT / "MLproject").read_text()]
    commands = [m for t in texts for m in re.findall(r"mlflow run \.[^`\n]*(?:\n  [^`\n]*)?", t)]
    assert commands, "the README and MLproject show how to use `mlflow run`"
    for command in commands:
        assert "--experiment-name llem-mlflow" in command, command
