"""Environment snapshot (packages, host facts, git state) and secret scrubbing."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from llem_mlflow.results.environment import cpu_model, git_state, ram_total_b, snapshot
from llem_mlflow.secrets import scrub_secrets
from tests.fakes import FakeDevice


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://alice:s3cret@mlflow.example.com/api", "https://mlflow.example.com/api"),
        ("postgresql://user:pw@db:5432/mlflow", "postgresql://user@db:5432/mlflow"),  # the user is no secret
        ("https://ghp_abc123@github.com/x.git", "https://github.com/x.git"),
        ("http://host/x?token=abc&run=1", "http://host/x?token=***&run=1"),
        (
            "s3://b/k?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA",
            "s3://b/k?X-Amz-Signature=***&X-Amz-Credential=***",
        ),
        ("http://h/?api_key=1;password=2&secret=3", "http://h/?api_key=***;password=***&secret=***"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("file:///tmp/mlruns", "file:///tmp/mlruns"),
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ],
)
def test_scrub_secrets(text: str, expected: str) -> None:
    assert scrub_secrets(text) == expected


def test_scrub_secrets_inside_longer_text() -> None:
    text = "tracking uri https://u:p@h/x?token=t failed"
    assert scrub_secrets(text) == "tracking uri https://h/x?token=*** failed"


def test_cpu_model_and_ram_from_proc_files(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       2113432 kB\nMemFree: 1 kB\n")
    assert cpu_model(cpuinfo) == "Intel(R) Xeon(R) Platinum 8480+"
    assert ram_total_b(meminfo) == 2113432 * 1024


def test_cpu_model_and_ram_fallbacks(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert cpu_model(missing) == (platform.machine() or None)
    ram = ram_total_b(missing)
    assert ram is None or ram > 0


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_state_commit_and_dirty(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("a")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "init")
    commit, dirty = git_state(tmp_path)
    assert commit is not None and len(commit) == 40
    assert dirty is None  # not determined: no git subprocess
    assert (
        commit
        == subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    _git(tmp_path, "checkout", "-q", "-b", "topic")
    _git(tmp_path, "pack-refs", "--all")
    assert git_state(tmp_path / "sub" if (tmp_path / "sub").mkdir() is None else tmp_path) == (commit, None)


def test_git_state_outside_a_repo(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state(tmp_path) == (None, None)
    assert capfd.readouterr().err == ""


def test_snapshot_merges_backend_versions_and_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_should_not_leak")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    gpu = FakeDevice(cuda_index=0, uuid="GPU-abc").info
    snap = snapshot(
        [gpu],
        driver_version="580.159.04",
        backend_versions={"torch": "2.13.0+cu128", "transformers": None, "cuda_runtime": "12.8"},
        cwd=tmp_path,
    )
    assert snap.packages["torch"] == "2.13.0+cu128"
    assert snap.packages["pydantic"] is not None  # from installed metadata
    assert "transformers" in snap.packages and "cuda_runtime" not in snap.packages
    assert snap.cuda_runtime == "12.8"
    assert snap.driver_version == "580.159.04"
    assert [(g.cuda_index, g.uuid, g.compute_capability) for g in snap.gpus] == [(0, "GPU-abc", "9.0")]
    assert snap.python_version == platform.python_version()
    assert snap.cpu_count is not None and snap.cpu_count >= 1
    assert (snap.git_commit, snap.git_dirty) == (None, None)
    assert "hf_should_not_leak" not in snap.model_dump_json()
