"""scripts/startup_profile.py: importtime lines parsed and summed per package; a real cProfile file read."""

from __future__ import annotations

import cProfile
from pathlib import Path

from tests.scripts_loader import load_script

startup_profile = load_script("scripts/startup_profile.py")

LOG = """\
import time: self [us] | cumulative | imported package
import time:      1500 |       1500 |   torch._C
import time:       500 |       2000 | torch
noise from the program
import time:      3000 |       3000 |     sklearn.metrics
import time:      1000 |       4000 |   transformers
"""


def test_parse_skips_header_and_other_lines() -> None:
    rows = startup_profile.parse_importtime(LOG)
    assert [r.module for r in rows] == ["torch._C", "torch", "sklearn.metrics", "transformers"]
    assert rows[2].self_us == 3000 and rows[3].cumulative_us == 4000


def test_packages_sum_own_times_largest_first() -> None:
    rows = startup_profile.parse_importtime(LOG)
    assert startup_profile.by_package(rows) == [("sklearn", 0.003), ("torch", 0.002), ("transformers", 0.001)]


def test_report_reads_a_real_profile(tmp_path: Path, capsys) -> None:
    log = tmp_path / "importtime.txt"
    log.write_text(LOG)
    prof = tmp_path / "run.prof"
    cProfile.run("sum(range(1000))", str(prof))
    assert startup_profile.main([str(log), str(prof), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "0.01 s in total" in out and "profile:" in out and "sklearn" in out.splitlines()[2]


def test_a_log_without_importtime_lines_fails_clearly(tmp_path: Path, capsys) -> None:
    log = tmp_path / "plain.txt"
    log.write_text("hello\n")
    assert startup_profile.main([str(log)]) == 1
    assert "-X importtime" in capsys.readouterr().err
