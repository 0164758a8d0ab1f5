"""The in-process promise on CPU: no child process starts inside a measured window (``tests/spawns.py``).

A child started before measuring (loading) or after it (the power figure: matplotlib's first import runs
``fc-list``; MLflow logging) is allowed. The GPU suite checks the same on a real GPU
(``tests/integration/test_gpu_experiment.py``); the GPU scripts call the CLI through the interpreter
that has the package (``python3 -m llem_mlflow``), never through a console script that may run another.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.protocols import CudaDeviceId, LoadedModel
from llem_mlflow.run.execute import GpuSet, execute, run_experiment
from tests.fakes import FakeBackend, FakeDevice
from tests.spawns import recording, spawns_in_measured_windows

ROOT = Path(__file__).resolve().parents[2]
CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)


def _child() -> None:
    subprocess.run(["true"], check=True)


def test_a_random_tiny_model_on_cpu_starts_no_child_in_its_measured_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = ExperimentConfig(model="llem/tiny-gpt2", weights="random", device="cpu", n=4, batch_size=2,
                           max_input_tokens=8, max_output_tokens=4, output_dir=str(tmp_path))  # fmt: skip
    with recording(monkeypatch) as log:
        result = run_experiment(cfg)  # logged to MLflow too (conftest's sqlite store), after measuring
    assert len(log.measured) == 1 and "measure" in result.windows
    assert spawns_in_measured_windows(log, result.windows) == []


class _SpawningBackend(FakeBackend):
    """Starts a child process when it loads and, when asked, in every generate()."""

    def __init__(self, in_generate: bool) -> None:
        super().__init__(device="cuda", cuda_devices=[CUDA0], on_generate=self._work)
        self.in_generate = in_generate

    def load(self) -> LoadedModel:
        _child()  # before measuring: allowed
        return super().load()

    def _work(self) -> None:
        time.sleep(0.01)
        if self.in_generate:
            _child()


def _gpu_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_generate: bool) -> list[str]:
    cfg = ExperimentConfig(n=2, batch_size=1, max_input_tokens=4, max_output_tokens=2, baseline_s=0.05,
                           sampling_interval_s=0.005, output_dir=str(tmp_path / str(in_generate)),
                           mlflow=False)  # fmt: skip
    device = FakeDevice(energy_script=lambda: time.time() * 100.0, power_w=100.0)
    with recording(monkeypatch) as log:
        result = execute(
            cfg,
            backend=_SpawningBackend(in_generate),
            gpus=lambda ids: GpuSet([device], "580"),
            store_probe=lambda c: None,
        ).result
    assert {"idle", "measure", "idle_after"} <= set(result.windows)
    assert log.spawns and log.spawns[0].at_s < log.measured[0][0]  # the load's child was seen, outside
    return spawns_in_measured_windows(log, result.windows)


def test_a_child_outside_the_windows_is_allowed_and_one_inside_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _gpu_run(tmp_path, monkeypatch, in_generate=False) == []
    caught = _gpu_run(tmp_path, monkeypatch, in_generate=True)
    assert caught and all("subprocess.Popen" in line for line in caught)
    assert any(line.startswith("measure: ") for line in caught)  # the result's measured window
    assert any(line.startswith("measure() call: ") for line in caught)  # warm-up to idle-after


def test_gpu_scripts_call_the_cli_through_python3() -> None:
    scripts = sorted((ROOT / "scripts").glob("gpu-*.sh"))
    assert scripts
    for script in scripts:
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not re.search(r"(^|[\s;|&({])llem-mlflow\s", code), f"{script.name}:{number}: {line}"
    cycles = (ROOT / "scripts" / "gpu-cycles.sh").read_text()
    assert "python3 -m llem_mlflow run --model gpt2" in cycles


_FRESH_IMAGE_RUN = """
import json, shutil, sys, pytest
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.run.execute import GpuSet, execute
from tests.fakes import FakeBackend, PoweredGpu
from tests.spawns import recording, spawns_in_measured_windows

assert "matplotlib" not in sys.modules
board = PoweredGpu(busy_s=0.05)
cfg = ExperimentConfig(n=2, batch_size=1, max_input_tokens=4, max_output_tokens=2, baseline_s=0.05,
                       sampling_interval_s=0.005, output_dir=sys.argv[1], mlflow=False)
cuda0 = CudaDeviceId(0, "GPU-fake-0", None)
backend = FakeBackend(device="cuda", cuda_devices=[cuda0], on_generate=board.busy)
mp = pytest.MonkeyPatch()
with recording(mp) as log:
    outcome = execute(cfg, backend=backend, gpus=lambda ids: GpuSet([board.device], "580"),
                      store_probe=lambda c: None)
mp.undo()
png = (outcome.result_dir / "power.png").is_file()
print(json.dumps({"png": png, "fc_list": bool(shutil.which("fc-list")),
                  "spawned": [s.what for s in log.spawns if s.at_s > log.measured[0][1]],
                  "inside": spawns_in_measured_windows(log, outcome.result.windows)}))
"""


def test_a_fresh_matplotlib_builds_its_font_cache_after_the_measured_window(tmp_path: Path) -> None:
    """Issue 16 item 11 on CPU: a matplotlib that never ran starts ``fc-list`` for the power figure."""
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_IMAGE_RUN, str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["png"] and seen["inside"] == []
    if seen["fc_list"]:  # where fc-list exists, matplotlib ran it: after measuring, for power.png
        assert any("fc-list" in what for what in seen["spawned"]), seen
