"""Peak FLOP/s looked up by NVML GPU name."""

from __future__ import annotations

import pytest

from llem_mlflow.figures.peaks import GPUS, gpu_peaks, peak_flops

T = 1e12


@pytest.mark.parametrize(
    ("name", "precision", "expected"),
    [
        ("NVIDIA H200", "bf16", 989 * T),
        ("NVIDIA H200", "fp16", 989 * T),
        ("NVIDIA H200", "fp32", 67 * T),  # plain FP32, not the TF32 tensor figure
        ("NVIDIA H200", "tf32", 494 * T),
        ("NVIDIA H200 NVL", "bf16", 835 * T),
        ("NVIDIA H100 80GB HBM3", "bf16", 989 * T),
        ("NVIDIA H100 80GB HBM3", "fp32", 67 * T),
        ("NVIDIA H100 PCIe", "bf16", 756 * T),
        ("NVIDIA H100 PCIe", "fp32", 51 * T),
        ("NVIDIA H100 NVL", "fp16", 835 * T),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312 * T),
        ("NVIDIA A100-SXM4-80GB", "fp32", 19.5 * T),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156 * T),
        ("NVIDIA A100 80GB PCIe", "fp16", 312 * T),
        ("NVIDIA A100-PCIE-40GB", "bf16", 312 * T),
        ("NVIDIA L40S", "bf16", 362.05 * T),
        ("NVIDIA L40S", "fp32", 91.6 * T),
        ("NVIDIA L4", "bf16", 121 * T),
        ("NVIDIA A10", "fp16", 125 * T),
        ("NVIDIA GeForce RTX 4090", "fp16", 165.2 * T),  # FP32 accumulate: half rate on GeForce
        ("NVIDIA GeForce RTX 4090", "fp32", 82.6 * T),
    ],
)
def test_known_gpus(name: str, precision: str, expected: float) -> None:
    assert peak_flops(name, precision) == expected


@pytest.mark.parametrize(
    "name",
    ["nvidia h200", "  NVIDIA   H200  ", "NVIDIA-H200", "nvidia_h200", "H200", "Nvidia H200 SXM"],
)
def test_case_and_spacing_do_not_matter(name: str) -> None:
    assert peak_flops(name, "bf16") == 989 * T


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("nvidia a100 sxm4 80gb", "A100 SXM 80GB"),
        ("NVIDIA A100 SXM4 40GB", "A100 SXM 40GB"),
        ("nvidia  a100-80gb-pcie", "A100 PCIe 80GB"),
        ("NVIDIA h100 pcie", "H100 PCIe"),
        ("NVIDIA H200 NVL", "H200 NVL"),  # the longer alias beats plain "h200"
        ("NVIDIA L40S", "L40S"),  # "l4" is a whole token: it does not match "l40s"
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10", "A10"),  # and "a10" does not match "a100"
        ("nvidia geforce rtx 4090", "GeForce RTX 4090"),
    ],
)
def test_the_most_specific_entry_wins(name: str, label: str) -> None:
    peaks = gpu_peaks(name)
    assert peaks is not None and peaks.label == label


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Tesla T4",
        "NVIDIA A10G",
        "NVIDIA L40",  # not L4, not L40S
        "NVIDIA GH200 480GB",  # "gh200" is not "h200"
        "NVIDIA H100",  # form factor unknown: SXM, PCIe and NVL peaks differ
        "NVIDIA A100",  # memory variant unknown
        "NVIDIA GeForce RTX 4090 D",
        "NVIDIA GeForce RTX 4090 Laptop GPU",
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb",  # a slice, not the board
        "AMD Instinct MI300X",
    ],
)
def test_unknown_gpus_give_none(name: str) -> None:
    assert gpu_peaks(name) is None
    assert peak_flops(name, "bf16") is None


def test_precision_spellings() -> None:
    assert peak_flops("NVIDIA H200", "BF16") == 989 * T
    assert peak_flops("NVIDIA H200", "torch.bfloat16") == 989 * T
    assert peak_flops("NVIDIA H200", "float16") == 989 * T
    assert peak_flops("NVIDIA H200", "half") == 989 * T
    assert peak_flops("NVIDIA H200", "float32") == 67 * T
    assert peak_flops("NVIDIA H200", "fp8") is None
    assert peak_flops("NVIDIA H200", "auto") is None


def test_every_alias_resolves_to_its_own_entry() -> None:
    for gpu in GPUS:
        for alias in gpu.aliases:
            assert gpu_peaks(alias) is gpu, alias
            assert gpu_peaks(f"NVIDIA {alias.upper()}") is gpu, alias


def test_table_is_plausible() -> None:
    for gpu in GPUS:
        # Tensor cores beat plain FP32; TF32 runs at about half the 16-bit rate; BF16 == FP16 (dense).
        assert gpu.fp32 <= gpu.tf32 < gpu.bf16 == gpu.fp16, gpu.label
        assert gpu.tf32 == pytest.approx(gpu.bf16 / 2, rel=0.02), gpu.label
        assert 1e13 < gpu.bf16 < 2e15, gpu.label
