"""The GPUs a run measures: ``GpuSet`` (opened through NVML, or empty with the reason energy is not
measured) and the ``GpuProvider`` that ``execute`` takes so tests can hand in fakes.

Names with a leading underscore are the run package's own (used by its modules), not public API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from llem_mlflow.errors import DeviceError
from llem_mlflow.measure import stages as measure
from llem_mlflow.protocols import CudaDeviceId, GpuDevice, LoadedModel


@dataclass(frozen=True)
class GpuSet:
    """The GPUs the model uses, opened for measurement (empty: energy is not measured)."""

    devices: Sequence[GpuDevice]
    driver_version: str | None
    warning: str | None = None
    close: Callable[[], None] = lambda: None  # releases NVML once the measurement is over


GpuProvider = Callable[[Sequence[CudaDeviceId]], GpuSet]


def _no_gpu(loaded: LoadedModel) -> GpuSet:
    msg = (
        f"energy not measured: the model runs on {loaded.device}, not an NVIDIA GPU (energy fields are null)"
    )
    return GpuSet(devices=[], driver_version=None, warning=msg)


def _nvml_gpus(cuda_ids: Sequence[CudaDeviceId], nvml: Any = None) -> GpuSet:
    """The NVML devices of ``cuda_ids``; NVML is shut down on every path (``nvml``: a fake in tests)."""
    from llem_mlflow.measure.device import try_open_session

    session, reason = try_open_session(nvml)
    if session is None:
        return GpuSet(devices=[], driver_version=None, warning=f"energy not measured: {reason}")
    try:
        devices = session.devices_for(list(cuda_ids))
    except DeviceError as exc:
        driver = session.driver_version()
        session.close()
        return GpuSet(devices=[], driver_version=driver, warning=f"energy not measured: {exc}")
    return GpuSet(devices=devices, driver_version=session.driver_version(), close=session.close)


def _with_gpu_warning(m: measure.Measurement, gpu_set: GpuSet) -> measure.Measurement:
    """``m`` with the GPU set's warning (why energy is not measured) first, when there is one."""
    return replace(m, warnings=[gpu_set.warning, *m.warnings]) if gpu_set.warning else m
