"""scripts/sample_profile.py: a module run under the sampler, its busy function found, its exit code kept."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.scripts_loader import load_script

sample_profile = load_script("scripts/sample_profile.py")

BUSY = """\
import sys
import time


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def nap(seconds):
    time.sleep(seconds)


if __name__ == "__main__":
    spin(float(sys.argv[1]))
    nap(0.05)
    sys.exit(int(sys.argv[2]))
"""


@pytest.fixture
def busy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "llem_busy_mod.py").write_text(BUSY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the script sets sys.argv for the module
    return "llem_busy_mod"


def test_the_busy_function_tops_self_time_and_the_exit_code_is_kept(tmp_path: Path, busy_module: str) -> None:
    out = tmp_path / "profile.txt"
    code = sample_profile.main([str(out), "--interval-s", "0.005", "-m", busy_module, "0.4", "3"])
    assert code == 3
    text = out.read_text()
    self_part = text.split("largest self time (s):")[1].splitlines()
    assert "spin  (llem_busy_mod.py:5)" in self_part[1]  # the first, largest row
    assert float(self_part[1].split()[0]) > 0.2  # ~0.4 s of 0.45 s
    assert "nap  (llem_busy_mod.py:11)" in text


def test_a_missing_module_argument_is_refused() -> None:
    with pytest.raises(SystemExit, match="-m MODULE"):
        sample_profile.main(["out.txt"])


def test_package_of_names_the_folder_under_site_packages() -> None:
    assert sample_profile.package_of("/v/lib/python3.12/site-packages/torch/nn/modules/module.py") == "torch"
    assert sample_profile.package_of("/v/lib/python3.12/site-packages/six.py") == "six"
    assert sample_profile.package_of("/work/main/llem_mlflow/run/execute.py") == "execute.py"
