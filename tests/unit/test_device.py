"""NvmlSession / NvmlDevice against a hand-written fake pynvml module (no GPU needed)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from llem_mlflow.device import NvmlSession, try_open_session
from llem_mlflow.errors import DeviceError
from llem_mlflow.protocols import CudaDeviceId


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


@dataclass
class FakeGpu:
    uuid: str
    bus_id: str
    name: str = "NVIDIA H200"
    energy_mj: int = 0
    power_avg_mw: int = 115_900
    power_instant_mw: int | None = 80_700  # None: field unsupported
    mig_mode: int | None = None  # None: GetMigMode not supported
    fail_energy: bool = False
    fail_temperature: bool = False
    has_event_reasons: bool = True
    pids: list[int] | None = None  # compute processes listed; None: the call is not supported
    only_v2_processes: bool = False  # the driver lacks the v3 process call (pynvml: library mismatch)


class FakeLibraryMismatchError(Exception):
    """Stands in for pynvml.NVMLLibraryMismatchError, which is not an NVMLError."""


class FakeNvml:
    """The subset of pynvml that llem_mlflow.device uses; strings returned as bytes like older pynvml."""

    NVMLError = FakeNVMLError
    NVMLLibraryMismatchError = FakeLibraryMismatchError
    NVML_FI_DEV_POWER_INSTANT = 186
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_FEATURE_ENABLED = 1

    def __init__(self, gpus: list[FakeGpu], fail_init: bool = False, as_bytes: bool = True) -> None:
        self.gpus = gpus
        self.fail_init = fail_init
        self.as_bytes = as_bytes
        self.initialised = False
        self.shutdowns = 0
        self.uuid_lookups: list[str] = []

    def _s(self, text: str) -> str | bytes:
        return text.encode() if self.as_bytes else text

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise FakeNVMLError("Driver Not Loaded")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        return self._s("580.159.04")

    def nvmlSystemGetNVMLVersion(self) -> str | bytes:
        return self._s("13.580.159.04")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        return self.gpus[i]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        self.uuid_lookups.append(uuid)
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> FakeGpu:
        for gpu in self.gpus:
            if gpu.bus_id.lower() == bus_id.lower():
                return gpu
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetIndex(self, h: FakeGpu) -> int:
        return self.gpus.index(h)

    def nvmlDeviceGetName(self, h: FakeGpu) -> str | bytes:
        return self._s(h.name)

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str | bytes:
        return self._s(h.uuid)

    def nvmlDeviceGetPciInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(busId=self._s(h.bus_id))

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(total=150_000_000_000, used=2_000_000_000, free=0)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:
        return 700_000

    def nvmlDeviceGetPersistenceMode(self, h: FakeGpu) -> int:
        return 1

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeGpu) -> tuple[int, int]:
        return (9, 0)

    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        if h.mig_mode is None:
            raise FakeNVMLError("Not Supported")
        return [h.mig_mode, h.mig_mode]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        if h.fail_energy:
            raise FakeNVMLError("Not Supported")
        return h.energy_mj

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return h.power_avg_mw

    def nvmlDeviceGetFieldValues(self, h: FakeGpu, ids: list[int]) -> list[Any]:
        if ids != [self.NVML_FI_DEV_POWER_INSTANT]:
            raise FakeNVMLError("Invalid Argument")
        if h.power_instant_mw is None:
            return [SimpleNamespace(nvmlReturn=3, valueType=1, value=SimpleNamespace(uiVal=0))]
        return [SimpleNamespace(nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=h.power_instant_mw))]

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        if h.fail_temperature:
            raise FakeNVMLError("Not Supported")
        return 41

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock: int) -> int:
        return 1980 if clock == self.NVML_CLOCK_SM else 0

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> Any:
        return SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGpu) -> int:
        if not h.has_event_reasons:
            raise FakeNVMLError("Function Not Found")
        return 0x4

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeGpu) -> int:
        return 0x20

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu) -> list[Any]:
        if h.only_v2_processes:
            raise FakeLibraryMismatchError("use a versioned function")
        return self.nvmlDeviceGetComputeRunningProcesses_v2(h)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: FakeGpu) -> list[Any]:
        if h.pids is None:
            raise FakeNVMLError("Not Supported")
        return [SimpleNamespace(pid=pid, usedGpuMemory=1 << 20) for pid in h.pids]


def three_gpus() -> list[FakeGpu]:
    return [FakeGpu(uuid=f"GPU-{i}{i}{i}", bus_id=f"00000000:{0x19 + i:02X}:00.0") for i in range(3)]


def open_fake(gpus: list[FakeGpu], **kwargs: Any) -> tuple[NvmlSession, FakeNvml]:
    nvml = FakeNvml(gpus, **kwargs)
    return NvmlSession.open(nvml), nvml


def test_uuid_mapping_follows_cuda_order_not_nvml_order() -> None:
    # CUDA_VISIBLE_DEVICES=2,0: CUDA 0 is NVML 2 and CUDA 1 is NVML 0
    session, _ = open_fake(three_gpus())
    ids = [CudaDeviceId(0, "GPU-222", None), CudaDeviceId(1, "GPU-000", None)]
    devices = session.devices_for(ids)
    assert [(d.info.cuda_index, d.info.nvml_index, d.info.uuid) for d in devices] == [
        (0, 2, "GPU-222"),
        (1, 0, "GPU-000"),
    ]


def test_uuid_without_gpu_prefix_is_matched() -> None:
    session, nvml = open_fake(three_gpus())
    [device] = session.devices_for([CudaDeviceId(0, "111", None)])
    assert device.info.uuid == "GPU-111"
    assert nvml.uuid_lookups == ["111", "GPU-111"]


def test_pci_bus_id_fallback_when_uuid_unknown() -> None:
    session, _ = open_fake(three_gpus())
    [device] = session.devices_for([CudaDeviceId(0, None, "00000000:1a:00.0")])
    assert device.info.nvml_index == 1


def test_no_match_raises_with_advice() -> None:
    session, _ = open_fake(three_gpus())
    with pytest.raises(DeviceError, match="CUDA_VISIBLE_DEVICES"):
        session.devices_for([CudaDeviceId(0, "GPU-nope", "00000000:99:00.0")])


def test_mig_enabled_gpu_is_refused() -> None:
    gpus = three_gpus()
    gpus[1].mig_mode = 1
    session, _ = open_fake(gpus)
    with pytest.raises(DeviceError, match="MIG"):
        session.devices_for([CudaDeviceId(0, "GPU-111", None)])
    with pytest.raises(DeviceError, match="MIG"):
        session.devices_for([CudaDeviceId(0, "MIG-abc", None)])


def test_mig_disabled_gpu_is_accepted() -> None:
    gpus = three_gpus()
    gpus[0].mig_mode = 0
    session, _ = open_fake(gpus)
    assert len(session.devices_for([CudaDeviceId(0, "GPU-000", None)])) == 1


def test_gpu_info_units_and_bytes_decoding() -> None:
    session, _ = open_fake(three_gpus(), as_bytes=True)
    info = session.devices_for([CudaDeviceId(3, "GPU-000", None)])[0].info
    assert info.name == "NVIDIA H200"
    assert info.uuid == "GPU-000"
    assert info.pci_bus_id == "00000000:19:00.0"
    assert info.power_limit_w == 700.0
    assert info.memory_total_b == 150_000_000_000
    assert info.persistence_mode is True
    assert info.compute_capability == "9.0"
    assert info.cuda_index == 3


def test_energy_is_counter_in_joules() -> None:
    gpus = three_gpus()
    gpus[0].energy_mj = 123_456_789
    session, _ = open_fake(gpus)
    [device] = session.devices_for([CudaDeviceId(0, "GPU-000", None)])
    assert device.energy_j() == pytest.approx(123_456.789)


def test_energy_failure_becomes_device_error() -> None:
    gpus = three_gpus()
    gpus[0].fail_energy = True
    session, _ = open_fake(gpus)
    [device] = session.devices_for([CudaDeviceId(0, "GPU-000", None)])
    with pytest.raises(DeviceError, match="energy counter of GPU 0") as excinfo:
        device.energy_j()
    assert isinstance(excinfo.value.__cause__, FakeNVMLError)


def test_power_uses_instant_field() -> None:
    session, _ = open_fake(three_gpus())
    [device] = session.devices_for([CudaDeviceId(0, "GPU-000", None)])
    assert device.power_field == "instant"
    assert device.power_w() == pytest.approx(80.7)


def test_power_falls_back_to_average_when_field_unsupported() -> None:
    gpus = three_gpus()
    gpus[0].power_instant_mw = None
    session, _ = open_fake(gpus)
    [device] = session.devices_for([CudaDeviceId(0, "GPU-000", None)])
    assert device.power_field == "average"
    assert device.power_w() == pytest.approx(115.9)


def test_slow_reading_fields_and_partial_failure() -> None:
    gpus = three_gpus()
    gpus[0].fail_temperature = True
    session, _ = open_fake(gpus)
    [device] = session.devices_for([CudaDeviceId(0, "GPU-000", None)])
    reading = device.slow_reading()
    assert reading.temperature_c is None
    assert reading.sm_clock_mhz == 1980.0
    assert reading.utilization_pct == 97.0
    assert reading.memory_used_b == 2_000_000_000
    assert reading.throttle_reasons == 0x4


def test_throttle_reasons_fall_back_to_old_call() -> None:
    gpus = three_gpus()
    gpus[0].has_event_reasons = False
    session, _ = open_fake(gpus)
    [device] = session.devices_for([CudaDeviceId(0, "GPU-000", None)])
    assert device.slow_reading().throttle_reasons == 0x20


@pytest.mark.parametrize(
    ("pids", "count"),
    [([4242], 1), ([4242, 977], 2), ([], 0), (None, None)],  # None: NVML says Not Supported
)
def test_compute_processes_is_the_length_of_nvml_list(pids: list[int] | None, count: int | None) -> None:
    gpus = three_gpus()
    gpus[1].pids = pids
    session, _ = open_fake(gpus)
    [device] = session.devices_for([CudaDeviceId(0, "GPU-111", None)])
    reading = device.slow_reading()
    assert reading.compute_processes == count
    assert reading.temperature_c == 41.0  # the other readings are unaffected


def test_compute_processes_fall_back_to_v2_call_on_library_mismatch() -> None:
    gpus = three_gpus()
    gpus[0].pids, gpus[0].only_v2_processes = [1, 2, 3], True
    session, _ = open_fake(gpus)
    [device] = session.devices_for([CudaDeviceId(0, "GPU-000", None)])
    assert device.slow_reading().compute_processes == 3


def test_session_versions_and_all_gpus_with_str_returns() -> None:
    session, _ = open_fake(three_gpus(), as_bytes=False)
    assert session.driver_version() == "580.159.04"
    assert session.nvml_version() == "13.580.159.04"
    infos = session.all_gpus()
    assert [(g.cuda_index, g.nvml_index, g.uuid) for g in infos] == [
        (-1, 0, "GPU-000"),
        (-1, 1, "GPU-111"),
        (-1, 2, "GPU-222"),
    ]


def test_context_manager_shuts_down_once() -> None:
    nvml = FakeNvml(three_gpus())
    with NvmlSession.open(nvml) as session:
        assert nvml.initialised
        session.close()
    assert nvml.shutdowns == 1


def test_init_failure_raises_and_try_open_reports_reason() -> None:
    with pytest.raises(DeviceError, match="energy will not be measured"):
        NvmlSession.open(FakeNvml([], fail_init=True))
    session, reason = try_open_session(FakeNvml([], fail_init=True))
    assert session is None
    assert reason is not None and "Driver Not Loaded" in reason
