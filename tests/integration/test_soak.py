"""The soak script, short: each fault kind once, every result exactly once on its store after sync."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Every fault kind of scripts/soak.py; ``first-use`` is three runs at once, so 15 runs hold each kind once.
KINDS = {"none", "server-restart", "server-down", "nvml-error", "gpu-lost", "interrupt", "slow-server",
         "spool-edit", "signal-write", "signal-log", "fsize-limit", "disk-full", "first-use"}  # fmt: skip


@pytest.mark.slow
def test_a_short_soak_keeps_every_result_exactly_once(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["--runs", "15", "--seed", "3", "--keep", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=tmp_path,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kinds = {line.split()[2] for line in lines if line.startswith("[soak] ") and line.split()[1].isdigit()}
    assert kinds == KINDS
    summary = next(line for line in lines if " on a store, " in line)
    assert summary.endswith(", 0 lost") and " 0 spooled" not in summary  # some faults did reach the spool
    assert not [line for line in lines if "PROBLEM" in line]
    assert "bad spool entries reported and skipped: 6/6" in proc.stdout  # one spool-edit: six bad entries
    assert not any((tmp_path / "victim").iterdir())  # the escaping result_dir was never written to
    assert lines[-1] == "15/15 exactly once on their store after sync"
