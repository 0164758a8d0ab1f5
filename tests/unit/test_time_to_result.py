"""Issue 19, time to result: CUDA's start-up in the background while the model loads, and the idle-after rule.

The background start (``backends.runtime.CudaStart``, started by ``backends.start_runtime``) is joined inside
the ``load`` lap, so none of it runs into the warm-up or a measured window, and its failure is a warning of
the run, never an error. The idle after the last cycle lasts ``idle_after_s`` (not the baseline's length)
and is skipped where nothing would compare it: no GPU, no baseline, or ``idle_after_s: 0``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llem_mlflow import backends
from llem_mlflow.backends import runtime
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import BackendError
from llem_mlflow.measure import stages
from llem_mlflow.measure.progress import LogProgress
from llem_mlflow.protocols import CudaDeviceId, LoadedModel
from llem_mlflow.run import execute as execute_module
from llem_mlflow.run.execute import GpuSet, Outcome, execute
from tests.fakes import FakeBackend, FakeDevice

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)


# --- CudaStart: a thread joined by wait(); its failure is returned, never raised -------------------------


def test_wait_joins_the_work_before_it_returns() -> None:
    done: list[str] = []
    release = threading.Event()

    def work() -> None:
        release.wait()
        done.append("context and cuBLAS started")

    started = runtime.CudaStart(work)
    assert done == []  # the work is held: only the join below can let wait() see it finished
    threading.Timer(0.05, release.set).start()
    assert started.wait() is None
    assert done == ["context and cuBLAS started"]


def test_a_failing_start_is_reported_not_raised() -> None:
    def work() -> None:
        raise RuntimeError("CUDA error: no CUDA-capable device is detected")

    problem = runtime.CudaStart(work).wait()
    assert problem is not None and "failed" in problem and "no CUDA-capable device" in problem


def test_a_start_still_running_at_the_timeout_is_reported() -> None:
    release = threading.Event()
    started = runtime.CudaStart(release.wait)
    try:
        problem = started.wait(timeout_s=0.01)
    finally:
        release.set()
    assert problem is not None and "still running" in problem


def test_warm_cuda_touches_nothing_where_torch_sees_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def no_tensor(*args: object, **kwargs: object) -> None:
        raise AssertionError("warm_cuda made a tensor without CUDA")

    monkeypatch.setattr(torch, "ones", no_tensor)
    runtime.warm_cuda(None)  # returns at once: harmless on CPU


def test_warm_cuda_makes_its_tensors_on_cuda_in_the_run_precision_and_draws_no_random_number(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch = pytest.importorskip("torch")
    made: list[tuple[str, object]] = []

    def on_cpu(make: Any) -> Any:  # the tensors land on the CPU here; the device asked for is recorded
        def wrapped(*args: Any, device: str, dtype: Any) -> Any:
            made.append((device, dtype))
            return make(*args, dtype=dtype)

        return wrapped

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch, "ones", on_cpu(torch.ones))
    monkeypatch.setattr(torch, "zeros", on_cpu(torch.zeros))
    rng = torch.get_rng_state()
    runtime.warm_cuda("auto")
    assert made == [("cuda", torch.bfloat16)] * 2
    assert torch.equal(torch.get_rng_state(), rng)  # the seeded weights built next are unchanged
    made.clear()
    runtime.warm_cuda("fp16")
    assert made == [("cuda", torch.float16)] * 2


# --- start_runtime: which runs start CUDA in the background -----------------------------------------------


def test_start_runtime_starts_cuda_for_the_transformers_backend_unless_cpu_or_device_map(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str | None] = []
    monkeypatch.setattr(runtime, "warm_cuda", lambda precision: asked.append(precision))
    started = backends.start_runtime(ExperimentConfig(precision="fp16"))  # device auto
    assert started is not None and started.wait() is None
    assert asked == ["fp16"]
    assert backends.start_runtime(ExperimentConfig(device="cpu")) is None
    assert backends.start_runtime(ExperimentConfig(device="cuda", device_map="balanced")) is None
    assert asked == ["fp16"]


# --- the runner: started with the load, joined inside the load lap, before the warm-up -------------------


class _Started:
    def __init__(self, events: list[str], problem: str | None) -> None:
        self.events, self.problem = events, problem
        events.append("runtime started")

    def wait(self, timeout_s: float = 60.0) -> str | None:
        self.events.append("runtime joined")
        return self.problem


def _cuda_run(tmp_path: Path, problem: str | None) -> tuple[FakeBackend, list[str], Outcome]:
    cfg = ExperimentConfig(n=2, batch_size=1, max_input_tokens=4, max_output_tokens=2, baseline_s=0.02,
                           idle_after_s=0.02, sampling_interval_s=0.005, output_dir=str(tmp_path),
                           mlflow=False)  # fmt: skip
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0])
    device = FakeDevice(energy_script=lambda: time.time() * 100.0, power_w=100.0)
    outcome = execute(
        cfg,
        backend=backend,
        gpus=lambda ids: GpuSet([device], "580"),
        store_probe=lambda c: None,
        start_runtime=lambda c: _Started(backend.events, problem),
    )
    return backend, backend.events, outcome


def test_the_runtime_starts_with_the_load_and_is_joined_before_the_warm_up(tmp_path: Path) -> None:
    _, events, outcome = _cuda_run(tmp_path, problem=None)
    first_generate = events.index("generate")
    assert events[:first_generate] == ["inspect", "runtime started", "load", "runtime joined"]
    assert not any("CUDA start-up" in w for w in outcome.result.warnings)


def test_a_failed_background_start_is_a_warning_and_the_run_goes_on(tmp_path: Path) -> None:
    problem = "the background CUDA start-up failed (RuntimeError: boom); the run started CUDA itself"
    backend, _, outcome = _cuda_run(tmp_path, problem=problem)
    assert problem in outcome.result.warnings
    assert outcome.result.windows["measure"].end_s > 0 and backend.load_calls == 1


class _FailingLoad(FakeBackend):
    def load(self) -> LoadedModel:
        self.events.append("load")
        raise BackendError("loading 'gpt2' on cuda (bf16) failed: CUDA out of memory")


def test_a_failed_load_still_joins_the_runtime_start_before_the_error_leaves(tmp_path: Path) -> None:
    backend = _FailingLoad(device="cuda", cuda_devices=[CUDA0])
    cfg = ExperimentConfig(n=1, batch_size=1, max_input_tokens=4, output_dir=str(tmp_path), mlflow=False)
    with pytest.raises(BackendError, match="out of memory"):
        execute(
            cfg,
            backend=backend,
            store_probe=lambda c: None,
            start_runtime=lambda c: _Started(backend.events, None),
        )
    assert backend.events[-3:] == ["runtime started", "load", "runtime joined"]


def test_a_backend_the_runner_makes_gets_the_backends_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeBackend()
    seen: list[ExperimentConfig] = []
    monkeypatch.setattr(execute_module, "_default_backend", lambda cfg: fake)
    monkeypatch.setattr(
        backends, "start_runtime", lambda cfg: seen.append(cfg) or _Started(fake.events, None)
    )
    cfg = ExperimentConfig(n=1, batch_size=1, max_input_tokens=4, max_output_tokens=2, device="cpu",
                           output_dir=str(tmp_path), mlflow=False)  # fmt: skip
    execute(cfg, store_probe=lambda c: None)
    assert seen == [cfg]
    assert fake.events.index("runtime joined") < fake.events.index("generate")


# --- idle after: idle_after_s long, skipped where nothing compares it ------------------------------------


def _slept_for_idle_after(
    cfg: ExperimentConfig, monkeypatch: pytest.MonkeyPatch, gpus: int = 1
) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(stages, "time", SimpleNamespace(sleep=slept.append, time=time.time))
    devices = [FakeDevice()] * gpus
    window = stages._idle_after(cfg, devices, FakeBackend(), LogProgress())
    assert (window is None) == (slept == [])
    return slept


def test_idle_after_lasts_idle_after_s_by_default_one_second_not_the_baseline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert ExperimentConfig().idle_after_s == 1.0 and ExperimentConfig().baseline_s == 3.0
    assert _slept_for_idle_after(ExperimentConfig(), monkeypatch) == [1.0]
    assert _slept_for_idle_after(ExperimentConfig(idle_after_s=2.5), monkeypatch) == [2.5]


def test_idle_after_is_skipped_without_gpu_baseline_or_length(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _slept_for_idle_after(ExperimentConfig(idle_after_s=0), monkeypatch) == []
    assert _slept_for_idle_after(ExperimentConfig(baseline_s=0), monkeypatch) == []
    assert _slept_for_idle_after(ExperimentConfig(), monkeypatch, gpus=0) == []


def test_idle_after_zero_leaves_no_window_no_lap_and_no_idle_after_power(tmp_path: Path) -> None:
    cfg = ExperimentConfig(n=2, batch_size=1, max_input_tokens=4, max_output_tokens=2, baseline_s=0.02,
                           idle_after_s=0, sampling_interval_s=0.005, output_dir=str(tmp_path),
                           mlflow=False)  # fmt: skip
    device = FakeDevice(energy_script=lambda: time.time() * 100.0, power_w=100.0)
    outcome = execute(
        cfg,
        backend=FakeBackend(device="cuda", cuda_devices=[CUDA0]),
        gpus=lambda ids: GpuSet([device], "580"),
        store_probe=lambda c: None,
    )
    result = outcome.result
    assert "idle" in result.windows and "idle_after" not in result.windows
    assert result.timings is not None and result.timings.idle_after_s is None
    assert result.uncertainty is not None and result.uncertainty.idle_after_w is None


def test_idle_after_s_is_not_in_the_measurement_hash() -> None:
    from llem_mlflow.results.identity import resolve

    def hashed(cfg: ExperimentConfig) -> str:
        kw = {"weights": "random", "precision": "bf16", "device": "cuda", "revision": None}
        return resolve(cfg, dataset="synthetic", tokenizer=None, **kw).measurement_hash()

    assert hashed(ExperimentConfig(idle_after_s=0)) == hashed(ExperimentConfig(idle_after_s=3.0))


def test_telling_the_device_counts_as_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU defaults' device check can import torch before the stopwatch starts: it is start-up time."""
    from types import SimpleNamespace

    from llem_mlflow.config import load_config
    from llem_mlflow.run import execute as ex

    ticks = iter([10.0, 12.5])
    monkeypatch.setattr(ex, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    monkeypatch.setattr(ex, "gpu_config", lambda cfg, backend: cfg)
    cfg = load_config(None)
    assert ex._configured(cfg, None, 0.5) == (cfg, 3.0)  # 0.5 s to the call + 2.5 s telling the device
    ticks = iter([0.0, 1.0])
    assert ex._configured(cfg, None, None) == (cfg, None)  # the API: start-up unknown, as before
    ticks = iter([0.0, 1.0])
    assert ex._configured(cfg, object(), 0.5) == (cfg, 0.5)  # a backend's planned_device: nothing added
