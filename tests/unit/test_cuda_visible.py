"""CUDA_VISIBLE_DEVICES read by one rule (``measure.device``): its entries, and the NVML GPUs it leaves."""

from __future__ import annotations

import pytest

from llem_mlflow.measure.device import cuda_visible_entries, visible_nvml_gpus
from llem_mlflow.protocols import GpuInfo


def _gpu(nvml_index: int, uuid: str) -> GpuInfo:
    return GpuInfo(nvml_index, nvml_index, "NVIDIA H200", uuid, None, None, None, None, None)


GPUS = [_gpu(0, "GPU-aaaa-1"), _gpu(1, "GPU-bbbb-2")]


@pytest.mark.parametrize(
    ("value", "entries"),
    [
        (None, None),  # unset: every GPU is visible
        ("", []),  # set and empty: none is
        ("0,1", ["0", "1"]),
        (" 1 , GPU-aaaa ", ["1", "GPU-aaaa"]),
        ("0,,1", ["0"]),  # CUDA stops at the first invalid (here empty) entry
        ("0,", ["0"]),
        (",0", []),
    ],
)
def test_entries_end_at_the_first_empty_one(value: str | None, entries: list[str] | None) -> None:
    assert cuda_visible_entries(value) == entries


@pytest.mark.parametrize(
    ("value", "uuids"),
    [
        (None, ["GPU-aaaa-1", "GPU-bbbb-2"]),
        ("1", ["GPU-bbbb-2"]),
        ("1,0", ["GPU-bbbb-2", "GPU-aaaa-1"]),
        ("GPU-bbbb", ["GPU-bbbb-2"]),
        ("0,7,1", ["GPU-aaaa-1"]),  # the list ends at the first entry naming no GPU
        ("0,0,1", ["GPU-aaaa-1"]),  # ... or one already named
        ("0,,1", ["GPU-aaaa-1"]),
        ("", []),
        ("GPU-", []),  # an ambiguous prefix names no GPU
    ],
)
def test_nvml_gpus_are_narrowed_in_the_variables_order(value: str | None, uuids: list[str]) -> None:
    assert [g.uuid for g in visible_nvml_gpus(GPUS, value)] == uuids
