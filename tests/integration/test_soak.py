"""The soak script, short: every fault kind, each experiment on the server or spooled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_short_soak_loses_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["--runs", "10", "--seed", "3", "--keep", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "soak.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = next(line for line in lines if " on server, " in line)
    assert summary.endswith(", 0 lost") and " 0 spooled" not in summary  # some faults did reach the spool
    assert lines[-1] == "10/10 on server after sync"
    kinds = {line.split()[2] for line in lines if line.startswith("[soak] ") and line.split()[1].isdigit()}
    assert {"server", "interrupt", "gpu", "nvml"} <= kinds
