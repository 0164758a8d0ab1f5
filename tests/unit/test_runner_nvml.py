"""The runner shuts NVML down on every path: measured, MIG refused, no matching GPU."""

from __future__ import annotations

from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.run.execute import _nvml_gpus
from tests.fakes import FakeGpu, FakeNvml


def _nvml(mig_mode: int | None = None) -> FakeNvml:
    gpu = FakeGpu(uuid="GPU-aaaa", bus_id="00000000:19:00.0", mig_mode=mig_mode)
    return FakeNvml([gpu])


def test_normal_path_keeps_nvml_open_until_close_then_shuts_it_down_once() -> None:
    nvml = _nvml()
    gpu_set = _nvml_gpus([CudaDeviceId(0, "GPU-aaaa", None)], nvml=nvml)
    assert len(gpu_set.devices) == 1 and nvml.shutdowns == 0  # still needed for the measurement
    gpu_set.close()
    gpu_set.close()
    assert nvml.shutdowns == 1


def test_mig_refusal_shuts_nvml_down_at_once() -> None:
    nvml = _nvml(mig_mode=1)
    gpu_set = _nvml_gpus([CudaDeviceId(0, "GPU-aaaa", None)], nvml=nvml)
    assert gpu_set.devices == [] and gpu_set.warning is not None and "MIG" in gpu_set.warning
    assert nvml.shutdowns == 1
    gpu_set.close()
    assert nvml.shutdowns == 1


def test_unknown_gpu_shuts_nvml_down_at_once() -> None:
    nvml = _nvml()
    gpu_set = _nvml_gpus([CudaDeviceId(3, "GPU-zzzz", "00000000:99:00.0")], nvml=nvml)
    assert gpu_set.devices == [] and nvml.shutdowns == 1


def test_nvml_that_fails_to_start_is_not_shut_down() -> None:
    nvml = FakeNvml([], fail_init=True)
    gpu_set = _nvml_gpus([CudaDeviceId(0, "GPU-aaaa", None)], nvml=nvml)
    assert gpu_set.devices == [] and nvml.shutdowns == 0
    assert gpu_set.warning is not None and "energy not measured" in gpu_set.warning
