"""README keeps exactly two set-up commands, .ci/run runs the test one, and the config table is complete."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = _setup_commands()
    assert len(commands) == 2
    install_run, tests = commands
    assert "llem-mlflow run" in install_run and "torch==2.13.0" in install_run
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_readme_configuration_table_names_every_config_field() -> None:
    from llem_mlflow.config import ExperimentConfig

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = text[text.index("## Configuration") : text.index("### What the hash names")]
    missing = [f for f in ExperimentConfig.model_fields if f"`{f}`" not in table]
    assert missing == [], f"README's Configuration table lacks {missing}"
