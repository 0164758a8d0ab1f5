"""The GitHub workflows are valid YAML and call the same scripts as local runs and .ci/run."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _workflow(name: str) -> dict[object, object]:
    data = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    assert isinstance(data, dict)
    return data


def _commands(workflow: dict[object, object]) -> str:
    jobs = workflow["jobs"]
    assert isinstance(jobs, dict)
    return "\n".join(str(step.get("run", "")) for job in jobs.values() for step in job["steps"])


def test_ci_runs_the_local_check_script_on_two_pythons() -> None:
    wf = _workflow("ci.yml")
    job = wf["jobs"]["checks"]  # type: ignore[index]
    assert job["strategy"]["matrix"]["python-version"] == ["3.10", "3.12"]
    assert "bash scripts/check.sh" in _commands(wf)
    assert "bash scripts/check.sh" in (ROOT / ".ci" / "run").read_text()


def test_gpu_ci_triggers_and_script() -> None:
    wf = _workflow("gpu-ci.yml")
    triggers = wf[True]  # YAML 1.1 reads the key `on` as True
    assert isinstance(triggers, dict)
    assert (
        triggers["push"] == {"branches": ["main"]}
        and "schedule" in triggers
        and "workflow_dispatch" in triggers
    )
    commands = _commands(wf)
    assert "scripts/gpu-tests.sh" in commands and "--gpus all" in commands and "mlflow" in commands
    assert "-m gpu" in (ROOT / "scripts" / "gpu-tests.sh").read_text()


def test_gpu_ci_gates_each_commit_against_the_default_branchs_last_run() -> None:
    wf = _workflow("gpu-ci.yml")
    job = wf["jobs"]["gpu-gate"]  # type: ignore[index]
    commands = "\n".join(str(step.get("run", "")) for step in job["steps"])
    assert "--run-name" in commands and "${{ github.sha }}" in commands  # each commit's run is findable
    assert '--baseline "mlflow.runName=$BASE_SHA"' in commands and "--fail-if-worse" in commands
    assert "GITHUB_STEP_SUMMARY" in commands and "1) " in commands and "3) " in commands
    assert job["env"]["GATE_STORE"].startswith("/var/lib/")  # the same tracking server every time
    assert "pull_request" in wf[True]  # type: ignore[index]
