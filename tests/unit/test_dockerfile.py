"""docker/Dockerfile keeps its properties (read as text; no container engine needed): CUDA defaults behind
build arguments, a non-root user, cache-friendly layer order, no secrets, a smoke stage running README's
main job; .dockerignore keeps local state out of the context; scripts/docker-smoke.sh parses."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SMOKE_SCRIPT = ROOT / "scripts" / "docker-smoke.sh"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name (FROM ... AS name); the instructions before the first FROM under ''."""
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for keyword, args in _instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, flags=re.I)
            assert match and match.group(2), f"every stage is named: FROM {args}"
            current = match.group(2)
            stages[current] = [(keyword, args)]
        else:
            stages[current].append((keyword, args))
    return stages


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ARG":
            name, _, default = args.partition("=")
            found[name.strip()] = default.strip()
    return found


def _index(instructions: list[tuple[str, str]], keyword: str, needle: str) -> int:
    hits = [i for i, (k, a) in enumerate(instructions) if k == keyword and needle in a]
    assert hits, f"no {keyword} containing {needle!r}"
    return hits[0]


def test_base_image_and_torch_are_build_args_with_cuda_defaults() -> None:
    stages = _stages()
    assert _args(stages[""])["BASE_IMAGE"].startswith("nvidia/cuda:")
    assert "cudnn-runtime" in _args(stages[""])["BASE_IMAGE"]
    assert stages["runtime"][0] == ("FROM", "${BASE_IMAGE} AS runtime")
    torch_args = _args(stages["runtime"])
    assert torch_args["TORCH_SPEC"] == "torch"
    assert torch_args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cu128"
    install = stages["runtime"][_index(stages["runtime"], "RUN", '"$TORCH_SPEC"')][1]
    assert '${TORCH_INDEX:+--index-url "$TORCH_INDEX"}' in install  # an empty index means PyPI


def test_runtime_runs_as_a_fixed_non_root_uid_before_the_entrypoint() -> None:
    runtime = _stages()["runtime"]
    users = [i for i, (k, _) in enumerate(runtime) if k == "USER"]
    entrypoint = _index(runtime, "ENTRYPOINT", "llem-mlflow")
    assert users and users[-1] < entrypoint
    user = runtime[users[-1]][1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {user}: a fixed numeric non-root uid"
    created = runtime[_index(runtime, "RUN", "useradd")][1]
    assert f"--uid {uid}" in created and "--home-dir /work" in created  # owns its working dir and store
    assert ("WORKDIR", "/work") in runtime[users[-1] :]


def test_dependencies_are_installed_before_the_source_and_the_package_with_no_deps() -> None:
    runtime = _stages()["runtime"]
    torch = _index(runtime, "RUN", '"$TORCH_SPEC"')
    deps = _index(runtime, "RUN", "pip install -r")
    source = _index(runtime, "COPY", "llem_mlflow")
    package = _index(runtime, "RUN", "--no-deps")
    apt = _index(runtime, "RUN", "apt-get install")
    assert apt < torch < deps < source < package
    copied_before_deps = [a for k, a in runtime[:deps] if k in ("COPY", "ADD")]
    assert copied_before_deps == ["pyproject.toml ./"], "only the metadata reaches the dependency layer"
    assert "pyproject.toml" in runtime[deps][1]


def test_no_secret_looking_env_or_arg_and_nothing_secret_copied() -> None:
    secret = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|KEY=|://[^/\s:@]+:[^/\s@]+@", re.I)
    for keyword, args in _instructions():
        if keyword in ("ENV", "ARG"):
            assert not secret.search(args), f"{keyword} {args}"
        if keyword in ("COPY", "ADD"):
            assert not re.search(r"\.netrc|pip\.conf|\.pypirc|ca-certificates|\.pem|\.crt", args), args


def test_smoke_stage_runs_version_and_readmes_main_job() -> None:
    stages = _stages()
    smoke = stages["smoke"]
    assert smoke[0] == ("FROM", "runtime AS smoke")
    runs = " && ".join(a for k, a in smoke if k == "RUN")
    assert "llem-mlflow --version" in runs
    assert "llem-mlflow run" in runs
    assert "test -s" in runs and "result.json" in runs and "get_run" in runs  # result and MLflow run exist
    readme = (ROOT / "README.md").read_text().split("## Set up", 1)[1]
    main_job = re.search(r"llem-mlflow run[^\n`]*", readme)
    assert main_job, "README's set-up section has no llem-mlflow run"
    assert main_job.group(0).strip() in runs, "the smoke stage runs README's main job"
    # The default target (last stage) is the runtime image, not the smoke stage with its files.
    assert list(stages)[-1] != "smoke"
    assert stages[list(stages)[-1]][0][1].startswith("runtime ")


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for name in (".venv", ".whl", ".git", "results", "mlruns", "mlflow.db", "build"):
        assert "*" in patterns or name in patterns, name
        assert f"!{name}" not in patterns, name


def test_smoke_script_parses() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    done = subprocess.run([bash, "-n", str(SMOKE_SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
