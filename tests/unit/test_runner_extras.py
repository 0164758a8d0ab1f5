"""The runner's derived figures: CPU energy from RAPL at the window edges, FLOPs per phase, MFU, carbon."""

from __future__ import annotations

from pathlib import Path

import pytest

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure import rapl
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.run.execute import GpuSet, execute
from tests.fakes import FakeBackend, FakeDevice
from tests.unit.test_rapl import set_energy, zone

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)


def _cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    base = dict(n=4, batch_size=2, max_input_tokens=6, max_output_tokens=4, output_dir=str(tmp_path / "o"),
                mlflow=False, baseline_s=0.0, sampling_interval_s=0.005)  # fmt: skip
    return ExperimentConfig.model_validate({**base, **kw})


def test_cpu_energy_is_read_at_each_cycle_edge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "powercap"
    root.mkdir()
    pkg = zone(root, "intel-rapl:0", "package-0", 1_000_000)
    dram = zone(pkg, "intel-rapl:0:0", "dram", 0)
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", root)
    ticks = iter(range(1, 100))

    def burn() -> None:  # every generate() call costs 2 J of package and 0.5 J of DRAM energy
        k = next(ticks)
        set_energy(pkg, 1_000_000 + k * 2_000_000)
        set_energy(dram, k * 500_000)

    cfg = _cfg(tmp_path, cycles=2, warmup_batches=0)
    r = execute(cfg, backend=FakeBackend(on_generate=burn), store_probe=lambda c: None).result
    assert r.cpu_energy is not None
    assert r.cpu_energy.package_j == pytest.approx(2 * 2 * 2.0)  # 2 cycles x 2 batches x 2 J
    assert r.cpu_energy.dram_j == pytest.approx(2 * 2 * 0.5)


def test_no_powercap_means_no_cpu_energy_and_no_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", tmp_path / "absent")
    r = execute(_cfg(tmp_path), backend=FakeBackend(), store_probe=lambda c: None).result
    assert r.cpu_energy is None and not any("CPU energy" in w for w in r.warnings)


def test_phase_flops_mfu_energy_per_tflop_and_carbon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", tmp_path / "absent")
    device = FakeDevice(name="NVIDIA H200", energy_script=[0.0, 3600.0], power_w=300.0)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0])
    cfg = _cfg(tmp_path, carbon_intensity_g_per_kwh=400.0, pue=1.5)
    r = execute(
        cfg, backend=backend, gpus=lambda ids: GpuSet([device], "580"), store_probe=lambda c: None
    ).result
    c = r.compute
    assert c is not None and c.prefill_flops > 0 and c.decode_flops > 0
    assert c.prefill_flops + c.decode_flops == r.total_flops
    assert c.peak_flops_per_s == 67e12  # fake backend runs fp32: plain FP32 peak of the H200
    assert c.mfu == pytest.approx(r.total_flops / (r.total_inference_time_sec * 67e12))
    assert c.energy_per_tflop_j == pytest.approx(3600.0 / (r.total_flops / 1e12))
    assert r.carbon_g == pytest.approx(3600.0 / 3.6e6 * 1.5 * 400.0)  # 0.6 g
