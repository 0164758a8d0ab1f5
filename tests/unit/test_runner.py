"""The runner's order of operations on fakes: CPU path (no energy) and GPU path (scripted counter)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import ConfigError
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.run.execute import GpuSet, execute
from tests.fakes import FakeBackend, FakeDevice

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)


def _cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    base: dict[str, object] = dict(
        n=5,
        batch_size=2,
        max_input_tokens=6,
        max_output_tokens=4,
        output_dir=str(tmp_path / "out"),
        mlflow=False,
        baseline_s=0.05,
        sampling_interval_s=0.005,
    )
    return ExperimentConfig.model_validate({**base, **kw})


def _no_gpu_expected(ids: Sequence[CudaDeviceId]) -> GpuSet:
    raise AssertionError("the GPU provider must not be called for a CPU model")


def test_cpu_run_has_null_energy_and_exact_tokens(tmp_path: Path) -> None:
    backend = FakeBackend()
    outcome = execute(_cfg(tmp_path), backend=backend, gpus=_no_gpu_expected)
    r = outcome.result
    assert (r.energy_source, r.total_energy_j, r.avg_energy_per_token_j, r.energy) == (
        "none",
        None,
        None,
        None,
    )
    assert r.output_tokens == 5 * 4 and r.input_tokens == 5 * 6 and r.total_tokens == 50
    assert backend.generate_calls == [(2, 4), (2, 4), (2, 4), (1, 4)]  # 1 warm-up + 3 measured batches
    assert any("energy not measured" in w for w in r.warnings)
    assert r.total_flops > 0 and r.avg_tokens_per_second > 0
    saved = ExperimentResult.model_validate_json((outcome.result_dir / "result.json").read_text())
    assert saved == r and (outcome.result_dir / "timeseries.parquet").is_file()
    assert outcome.run_id is None


def test_gpu_run_takes_energy_from_counter_edges(tmp_path: Path) -> None:
    # Counter reads: idle start, idle end, window start, window end. The sampler must never read it.
    device = FakeDevice(energy_script=[10_000.0, 10_030.0, 10_100.0, 11_100.0], power_w=150.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=lambda: time.sleep(0.02))
    closed: list[bool] = []
    outcome = execute(
        _cfg(tmp_path),
        backend=backend,
        gpus=lambda ids: GpuSet(
            devices=[device], driver_version="580.159.04", close=lambda: closed.append(True)
        ),
    )
    assert closed == [True]
    r = outcome.result
    assert r.energy_source == "nvml" and r.total_energy_j == 1000.0
    assert r.avg_energy_per_token_j == pytest.approx(1000.0 / 20)
    assert r.energy is not None and r.energy.idle_power_w is not None
    idle = r.windows["idle"]
    assert r.energy.idle_power_w == pytest.approx(30.0 / idle.duration_s)
    assert r.energy.net_j == pytest.approx(1000.0 - r.energy.idle_power_w * r.windows["measure"].duration_s)
    assert device.energy_reads == 4
    assert r.environment_snapshot.driver_version == "580.159.04"
    assert r.environment_snapshot.gpus[0].uuid == "GPU-fake-0"
    assert backend.sync_calls >= 4  # both edges of both windows are synchronized
    assert r.windows["idle"].end_s <= r.windows["measure"].start_s


def test_jsonl_prompts_are_tokenized(tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text("\n".join(f'{{"prompt": "{" ".join(["w"] * k)}"}}' for k in (1, 3, 9)) + "\n")
    r = execute(_cfg(tmp_path, n=3, dataset=str(data)), backend=FakeBackend(), gpus=_no_gpu_expected).result
    assert r.input_tokens == 1 + 3 + 6  # the 9-word prompt is truncated to max_input_tokens
    assert r.output_tokens == 3 * 4


def test_missing_dataset_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        execute(_cfg(tmp_path, dataset=str(tmp_path / "none.jsonl")), backend=FakeBackend())


def test_real_cpu_run_starts_no_child_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import subprocess

    spawned: list[str] = []
    real = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def spy(self: subprocess.Popen[bytes], args: object, *rest: object, **kw: object) -> None:
        spawned.append(repr(args))
        real(self, args, *rest, **kw)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", spy)
    monkeypatch.setattr(os, "fork", lambda: spawned.append("fork"))
    cfg = _cfg(tmp_path, model="llem/tiny-gpt2", weights="random", n=2, max_output_tokens=2)
    result = execute(cfg).result
    assert result.output_tokens == 4 and result.environment_snapshot.platform
    assert spawned == []


def test_text_prompts_of_different_lengths_give_exact_output_tokens(tmp_path: Path) -> None:
    from helpers_models import make_local_model

    folder = make_local_model(tmp_path / "model", arch="llem/tiny-gpt2", with_tokenizer=True)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(f'{{"prompt": "{"ab" * k}"}}\n' for k in (1, 4, 2, 9, 3)))
    cfg = _cfg(
        tmp_path,
        model=str(folder),
        weights="random",
        dataset=str(data),
        n=5,
        batch_size=3,
        max_input_tokens=12,
        max_output_tokens=7,
    )
    result = execute(cfg).result
    assert result.output_tokens == 5 * 7
    assert result.input_tokens == 2 + 8 + 4 + 12 + 6  # one token per character, the 18-char prompt truncated
