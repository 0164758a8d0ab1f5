"""NvmlSession / NvmlDevice against a hand-written fake pynvml module (no GPU needed)."""

from __future__ import annotations

from typing import Any

import pytest

from llem_mlflow.errors import DeviceError
from llem_mlflow.measure.device import NvmlSession, try_open_session
from llem_mlflow.protocols import CudaDeviceId
from tests.fakes import FakeGpu, FakeNvml, FakeNVMLError


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


def test_session_driver_version_and_all_gpus_with_str_returns() -> None:
    session, _ = open_fake(three_gpus(), as_bytes=False)
    assert session.driver_version() == "580.159.04"
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
