"""NVML access: the session (init/shutdown), CUDA-to-NVML device mapping and one GPU's readings.

This is the only module that imports ``pynvml`` (package ``nvidia-ml-py``), lazily, so importing
llem_mlflow works without a GPU. Every NVML failure on the measurement path is translated into
``DeviceError`` here.

Readings and units:

* ``energy_j`` reads ``nvmlDeviceGetTotalEnergyConsumption`` (mJ, ~100 ms update step, ~3-4 ms per
  call on an H200): read it at CUDA-synced window edges only.
* ``power_w`` reads the instant field ``NVML_FI_DEV_POWER_INSTANT`` (mW, microseconds per call). On
  Hopper ``nvmlDeviceGetPowerUsage`` is a 1 s average, so it is only the fallback when the field is not
  supported; ``NvmlDevice.power_field`` says which one is in use ("instant" or "average").
* ``power_samples`` reads the driver's power sample buffer (``nvmlDeviceGetSamples``,
  ``NVML_TOTAL_POWER_SAMPLES``, mW): ``[]`` when nothing is newer (``NVML_ERROR_NOT_FOUND``),
  ``PowerBufferUnsupportedError`` when the GPU, driver or pynvml has no such buffer.
* ``slow_reading().compute_processes`` is the length of ``nvmlDeviceGetComputeRunningProcesses``: the
  compute processes on the GPU, this one included. Only the count is kept: inside a container NVML may
  list host PIDs (not ours) or nothing at all, so PIDs cannot be matched to ``os.getpid()``.

CUDA devices are matched to NVML by UUID, then by PCI bus id, never by index: CUDA_VISIBLE_DEVICES
and CUDA_DEVICE_ORDER make the two index spaces differ. ``cuda_visible_entries`` is the one rule for
reading CUDA_VISIBLE_DEVICES; ``visible_nvml_gpus`` narrows NVML's GPUs by it.

A read that NVML answers with ``NVML_ERROR_GPU_IS_LOST`` raises ``DeviceLostError`` (a ``DeviceError``):
the GPU fell off the bus or needs a reset, so every later read fails too and callers stop retrying it
(see docs/reliability/nvml-faults.md). MIG-enabled GPUs are refused when devices are opened: NVML
reports power and energy per card, not per MIG instance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

from llem_mlflow.errors import DeviceError
from llem_mlflow.protocols import CudaDeviceId, GpuInfo, SlowReading

T = TypeVar("T")

_NVML_SUCCESS = 0
_NVML_ERROR_GPU_IS_LOST = 15  # pynvml.NVML_ERROR_GPU_IS_LOST
_NVML_ERROR_NOT_FOUND = 6  # nvmlDeviceGetSamples: no sample newer than the timestamp
_NO_BUFFER = (3, 13)  # NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND (driver lacks the call)
_NO_ENERGY = "GPU energy will not be measured"


class DeviceLostError(DeviceError):
    """NVML reports the GPU as lost (``NVML_ERROR_GPU_IS_LOST``): no later read of it can succeed."""


class PowerBufferUnsupportedError(DeviceError):
    """The GPU, driver or pynvml keeps no power sample buffer (``nvmlDeviceGetSamples``): poll instead."""


def _read_error(nvml: Any, error: Exception, message: str) -> DeviceError:
    """``DeviceLostError`` when NVML says the GPU is lost, else ``DeviceError``, with ``message``."""
    lost = getattr(nvml, "NVML_ERROR_GPU_IS_LOST", _NVML_ERROR_GPU_IS_LOST)
    if getattr(error, "value", None) == lost:
        return DeviceLostError(f"{message} NVML reports the GPU as lost (fell off the bus or needs a reset).")
    return DeviceError(message)


def _text(value: Any) -> str:
    """NVML strings come back as bytes from older pynvml and as str from newer ones."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").rstrip("\x00")
    return str(value)


def _optional(nvml: Any, read: Callable[[], T]) -> T | None:
    """The value of an optional NVML read, or None when NVML cannot give it."""
    try:
        return read()
    except (nvml.NVMLError, AttributeError):
        return None


def _union_value(value: Any, value_type: Any) -> float:
    """Decode an ``nvmlValue_t`` union according to its ``nvmlValueType_t``."""
    member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    return float(getattr(value, member.get(int(value_type), "uiVal")))


def _field_value(field: Any) -> float:
    """Decode an ``nvmlFieldValue_t`` according to its ``valueType``."""
    return _union_value(field.value, field.valueType)


class NvmlDevice:
    """One physical GPU as seen through NVML, implementing ``protocols.GpuDevice``."""

    def __init__(self, nvml: Any, handle: Any, info: GpuInfo) -> None:
        self._nvml = nvml
        self._handle = handle
        self._info = info
        self.power_field = "instant" if self._instant_power_mw() is not None else "average"

    @property
    def info(self) -> GpuInfo:
        """Static facts read when the device was opened."""
        return self._info

    def energy_j(self) -> float:
        """Cumulative energy counter since driver load, in joules (~3-4 ms per call)."""
        try:
            energy_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except self._nvml.NVMLError as e:
            raise _read_error(
                self._nvml,
                e,
                f"Reading the energy counter of GPU {self._info.cuda_index} ({self._info.name}) failed: {e}. "
                "The counter needs a Volta or newer GPU and a working driver; check "
                "`nvidia-smi -q -d POWER`.",
            ) from e
        return float(energy_mj) / 1000.0

    def power_w(self) -> float:
        """Board power in watts: the instant field, or the 1 s average where the field is unsupported."""
        if self.power_field == "instant":
            instant_mw = self._instant_power_mw()
            if instant_mw is not None:
                return instant_mw / 1000.0
        try:
            return float(self._nvml.nvmlDeviceGetPowerUsage(self._handle)) / 1000.0
        except self._nvml.NVMLError as e:
            raise _read_error(
                self._nvml,
                e,
                f"Reading the power of GPU {self._info.cuda_index} ({self._info.name}) failed: {e}. "
                "Check the driver with `nvidia-smi -q -d POWER`.",
            ) from e

    def power_samples(self, since_us: int) -> list[tuple[int, float]]:
        """Buffered power samples newer than ``since_us``: ``(timestamp_us, watts)``, oldest first."""
        nvml, gpu = self._nvml, f"GPU {self._info.cuda_index} ({self._info.name})"
        try:
            kind = getattr(nvml, "NVML_TOTAL_POWER_SAMPLES", 0)
            value_type, samples = nvml.nvmlDeviceGetSamples(self._handle, kind, since_us)
        except AttributeError as e:  # a pynvml without the call
            raise PowerBufferUnsupportedError(f"pynvml has no nvmlDeviceGetSamples ({e})") from e
        except nvml.NVMLError as e:
            if getattr(e, "value", None) == _NVML_ERROR_NOT_FOUND:
                return []
            if getattr(e, "value", None) in _NO_BUFFER:
                raise PowerBufferUnsupportedError(f"{gpu} keeps no power sample buffer: {e}") from e
            raise _read_error(nvml, e, f"Reading the power sample buffer of {gpu} failed: {e}.") from e
        out = [(int(s.timeStamp), _union_value(s.sampleValue, value_type) / 1000.0) for s in samples]
        return sorted(s for s in out if s[0] > since_us)

    def slow_reading(self) -> SlowReading:
        """Temperature, SM clock, utilization, memory used, clock-event reasons and compute processes.

        Each is None when NVML cannot give it.
        """
        nvml, handle = self._nvml, self._handle
        util = _optional(nvml, lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        memory = _optional(nvml, lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        temperature = _optional(
            nvml, lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        )
        sm_clock = _optional(nvml, lambda: nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))
        return SlowReading(
            temperature_c=None if temperature is None else float(temperature),
            sm_clock_mhz=None if sm_clock is None else float(sm_clock),
            utilization_pct=None if util is None else float(util.gpu),
            memory_used_b=None if memory is None else int(memory.used),
            throttle_reasons=self._clock_event_reasons(),
            compute_processes=self._compute_processes(),
        )

    def _compute_processes(self) -> int | None:
        pids = self.compute_pids()
        return None if pids is None else len(pids)

    def compute_pids(self) -> list[int] | None:
        """The compute processes NVML lists (pids); the v2 call where the driver lacks the newest one."""
        nvml, handle = self._nvml, self._handle
        # pynvml raises NVMLLibraryMismatchError (not an NVMLError) when the driver lacks the v3 call
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", nvml.NVMLError)
        try:
            processes = _optional(nvml, lambda: nvml.nvmlDeviceGetComputeRunningProcesses(handle))
        except mismatch:
            processes = _optional(nvml, lambda: nvml.nvmlDeviceGetComputeRunningProcesses_v2(handle))
        return None if processes is None else [int(p.pid) for p in processes]

    def _clock_event_reasons(self) -> int | None:
        nvml, handle = self._nvml, self._handle
        reasons = _optional(nvml, lambda: nvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
        if reasons is None:
            reasons = _optional(nvml, lambda: nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))
        return None if reasons is None else int(reasons)

    def _instant_power_mw(self) -> float | None:
        """The instant power field in mW, or None when this GPU or driver does not support it."""
        nvml = self._nvml
        try:
            fields = nvml.nvmlDeviceGetFieldValues(self._handle, [nvml.NVML_FI_DEV_POWER_INSTANT])
        except (nvml.NVMLError, AttributeError):
            return None
        if not fields or int(fields[0].nvmlReturn) != _NVML_SUCCESS:
            return None
        return _field_value(fields[0])


def read_gpu_info(nvml: Any, handle: Any, cuda_index: int) -> GpuInfo:
    """Static facts of one GPU; only name and UUID are required, the rest is None when unavailable."""
    try:
        name = _text(nvml.nvmlDeviceGetName(handle))
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
    except nvml.NVMLError as e:
        raise DeviceError(f"NVML could not read the name or UUID of a GPU: {e}. Check the driver.") from e
    nvml_index = _optional(nvml, lambda: int(nvml.nvmlDeviceGetIndex(handle)))
    pci = _optional(nvml, lambda: nvml.nvmlDeviceGetPciInfo(handle))
    memory = _optional(nvml, lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    limit_mw = _optional(nvml, lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    persistence = _optional(nvml, lambda: nvml.nvmlDeviceGetPersistenceMode(handle))
    capability = _optional(nvml, lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle))
    return GpuInfo(
        cuda_index=cuda_index,
        nvml_index=-1 if nvml_index is None else nvml_index,
        name=name,
        uuid=uuid,
        pci_bus_id=None if pci is None else _text(pci.busId),
        memory_total_b=None if memory is None else int(memory.total),
        power_limit_w=None if limit_mw is None else float(limit_mw) / 1000.0,
        persistence_mode=None if persistence is None else persistence == nvml.NVML_FEATURE_ENABLED,
        compute_capability=None if capability is None else f"{capability[0]}.{capability[1]}",
    )


class NvmlSession:
    """An initialised NVML library (``nvmlInit`` ... ``nvmlShutdown``); use as a context manager."""

    def __init__(self, nvml: Any) -> None:
        """Wrap an already initialised pynvml module; use ``NvmlSession.open()`` to initialise one."""
        self._nvml = nvml
        self._open = True

    @classmethod
    def open(cls, nvml: Any | None = None) -> NvmlSession:
        """Initialise NVML (``nvml`` defaults to the real pynvml; tests pass a fake module)."""
        if nvml is None:
            try:
                import pynvml as nvml_module
            except ImportError as e:
                raise DeviceError(
                    f"pynvml is not installed ({e}): {_NO_ENERGY}. "
                    "Install it with `pip install nvidia-ml-py`."
                ) from e
            nvml = nvml_module
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise DeviceError(
                f"NVML could not be initialised ({e}): {_NO_ENERGY}. "
                "Check that an NVIDIA driver is installed and `nvidia-smi` works."
            ) from e
        return cls(nvml)

    def close(self) -> None:
        """Shut NVML down (once; errors on shutdown are ignored)."""
        if self._open:
            self._open = False
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()

    def __enter__(self) -> NvmlSession:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def driver_version(self) -> str:
        """The NVIDIA driver version, e.g. "580.159.04"."""
        try:
            return _text(self._nvml.nvmlSystemGetDriverVersion())
        except self._nvml.NVMLError as e:
            raise DeviceError(f"NVML could not report the driver version: {e}. Check the driver.") from e

    def all_gpus(self) -> list[GpuInfo]:
        """Every GPU NVML sees, in NVML order (``cuda_index`` is -1: the CUDA view is unknown here)."""
        nvml = self._nvml
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as e:
            raise DeviceError(f"NVML could not list the GPUs: {e}. Check `nvidia-smi -L`.") from e
        return [read_gpu_info(nvml, handle, cuda_index=-1) for handle in handles]

    def devices_for(self, cuda_ids: list[CudaDeviceId]) -> list[NvmlDevice]:
        """The NVML device behind each CUDA device, matched by UUID, then PCI bus id (never by index)."""
        devices = []
        for cuda_id in cuda_ids:
            handle = self._handle_for(cuda_id)
            self._refuse_mig(handle, cuda_id)
            info = read_gpu_info(self._nvml, handle, cuda_id.cuda_index)
            devices.append(NvmlDevice(self._nvml, handle, info))
        return devices

    def _handle_for(self, cuda_id: CudaDeviceId) -> Any:
        nvml = self._nvml
        if cuda_id.uuid is not None and cuda_id.uuid.startswith("MIG-"):
            raise _mig_error(cuda_id)
        lookups = [partial(nvml.nvmlDeviceGetHandleByUUID, u) for u in _uuid_spellings(cuda_id.uuid)]
        if cuda_id.pci_bus_id:
            lookups.append(partial(nvml.nvmlDeviceGetHandleByPciBusId, cuda_id.pci_bus_id))
        for lookup in lookups:
            handle = _optional(nvml, lookup)
            if handle is not None:
                return handle
        raise DeviceError(
            f"CUDA device {cuda_id.cuda_index} (uuid={cuda_id.uuid}, pci={cuda_id.pci_bus_id}) matches "
            "no GPU that NVML sees, by UUID or PCI bus id. Set CUDA_VISIBLE_DEVICES to GPU UUIDs "
            "(`nvidia-smi -L`) or check that torch and NVML use the same driver."
        )

    def _refuse_mig(self, handle: Any, cuda_id: CudaDeviceId) -> None:
        nvml = self._nvml
        modes = _optional(nvml, lambda: nvml.nvmlDeviceGetMigMode(handle))
        if modes is not None and int(modes[0]) == 1:
            raise _mig_error(cuda_id)


def _uuid_spellings(uuid: str | None) -> list[str]:
    """torch may report a UUID without NVML's "GPU-" prefix; try both spellings."""
    if not uuid:
        return []
    return [uuid] if uuid.startswith("GPU-") else [uuid, f"GPU-{uuid}"]


def _mig_error(cuda_id: CudaDeviceId) -> DeviceError:
    return DeviceError(
        f"CUDA device {cuda_id.cuda_index} is a MIG-enabled GPU: NVML reports power and energy only for the "
        "whole card, not per MIG instance, so the energy would be wrong. Disable MIG "
        "(`nvidia-smi -i <gpu> -mig 0`) or use a GPU without MIG."
    )


def try_open_session(nvml: Any | None = None) -> tuple[NvmlSession | None, str | None]:
    """``(session, None)`` when NVML starts, else ``(None, reason)``; never raises (for the CPU path)."""
    try:
        return NvmlSession.open(nvml), None
    except DeviceError as e:
        return None, str(e)


#: The variable that narrows which GPUs CUDA (and so this process) sees.
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


def cuda_visible_entries(value: str | None) -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` as CUDA reads it: None when unset (every GPU visible), else its entries.

    The one rule for the variable: comma-separated entries, each stripped, up to the first empty one
    (CUDA ignores everything from the first invalid entry on); an empty value hides every GPU ([]).
    """
    if value is None:
        return None
    entries: list[str] = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            break
        entries.append(entry)
    return entries


def visible_nvml_gpus(gpus: Sequence[GpuInfo], value: str | None) -> list[GpuInfo]:
    """``gpus`` (NVML order) as ``CUDA_VISIBLE_DEVICES`` = ``value`` narrows them, in the variable's order.

    An entry is an NVML index or a unique ``GPU-`` UUID prefix; as in CUDA, the list ends at the first
    entry that names no GPU, or one already named.
    """
    entries = cuda_visible_entries(value)
    if entries is None:
        return list(gpus)
    chosen: list[GpuInfo] = []
    for entry in entries:
        match = _visible_match(gpus, entry)
        if match is None or match in chosen:
            break
        chosen.append(match)
    return chosen


def _visible_match(gpus: Sequence[GpuInfo], entry: str) -> GpuInfo | None:
    if entry.isdigit():
        return next((g for g in gpus if g.nvml_index == int(entry)), None)
    if entry.startswith("GPU-"):
        hits = [g for g in gpus if g.uuid.startswith(entry)]
        return hits[0] if len(hits) == 1 else None
    return None
