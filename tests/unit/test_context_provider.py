"""The ``mlflow.run_context_provider`` entry point: GPU tags on runs a plain ``mlflow.start_run()`` makes."""

from __future__ import annotations

from importlib import metadata

import mlflow
import pytest
from mlflow.tracking.context.registry import _run_context_provider_registry

from llem_mlflow.tracking import context_provider
from llem_mlflow.tracking.context_provider import GpuRunContext
from tests.fakes import FakeGpu, FakeNvml

GPUS = [FakeGpu("GPU-aaaa-1", "00000000:19:00.0"), FakeGpu("GPU-bbbb-2", "00000000:3B:00.0")]


def _ours() -> GpuRunContext:
    found = [p for p in _run_context_provider_registry if isinstance(p, GpuRunContext)]
    assert len(found) == 1, "the entry point is not registered: reinstall the package (pip install -e .)"
    return found[0]


def test_the_entry_point_is_installed_under_mlflows_group() -> None:
    eps = metadata.entry_points(group="mlflow.run_context_provider")
    assert [ep.value for ep in eps if ep.name == "llem-gpu"] == [
        "llem_mlflow.tracking.context_provider:GpuRunContext"
    ]


def test_a_plain_start_run_gets_gpu_and_driver_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = _ours()
    monkeypatch.setattr(provider, "nvml", FakeNvml(GPUS))
    monkeypatch.setattr(provider, "_tags", None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with mlflow.start_run() as run:
        pass
    tags = mlflow.get_run(run.info.run_id).data.tags
    assert tags["llem.gpu.name"] == "NVIDIA H200"
    assert tags["llem.gpu.count"] == "2"
    assert tags["llem.gpu.uuids"] == "GPU-aaaa-1,GPU-bbbb-2"
    assert tags["llem.env.driver"] == "580.159.04"


def test_without_nvml_a_run_gets_no_gpu_tags(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = _ours()
    monkeypatch.setattr(provider, "nvml", FakeNvml([], fail_init=True))
    monkeypatch.setattr(provider, "_tags", None)
    with mlflow.start_run() as run:
        pass
    assert not any(k.startswith("llem.") for k in mlflow.get_run(run.info.run_id).data.tags)


@pytest.mark.parametrize(
    ("cuda_visible", "uuids"),
    [
        (None, ["GPU-aaaa-1", "GPU-bbbb-2"]),
        ("1", ["GPU-bbbb-2"]),
        ("1,0", ["GPU-bbbb-2", "GPU-aaaa-1"]),
        ("GPU-bbbb", ["GPU-bbbb-2"]),
        ("0,7,1", ["GPU-aaaa-1"]),  # like CUDA: the list ends at the first entry naming no GPU
        ("", []),
        ("GPU-", []),  # ambiguous prefix
    ],
)
def test_cuda_visible_devices_narrows_the_gpus(
    monkeypatch: pytest.MonkeyPatch, cuda_visible: str | None, uuids: list[str]
) -> None:
    if cuda_visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cuda_visible)
    tags = context_provider.read_tags(FakeNvml(GPUS))
    assert tags.get("llem.gpu.uuids", "").split(",") if uuids else tags == {}
    if uuids:
        assert tags["llem.gpu.uuids"].split(",") == uuids and tags["llem.gpu.count"] == str(len(uuids))


def test_a_failing_nvml_never_breaks_start_run(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:  # noqa: N802 - NVML's spelling
            raise RuntimeError("driver fell over")

    provider = GpuRunContext()
    provider.nvml = Broken(GPUS)
    assert provider.in_context() is False and provider.tags() == {}
