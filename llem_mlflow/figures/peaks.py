"""Peak dense throughput and peak memory bandwidth of known GPUs, looked up by NVML name (pure data).

``peak_flops(gpu_name, precision)`` gives the dense peak in FLOP/s (no 2:4 sparsity) per GPU, or None
for a GPU not in the table. ``peak_memory_bandwidth(gpu_name)`` gives the peak DRAM (HBM / GDDR)
bandwidth in bytes/s per GPU, or None, by the same matching rules; datasheets quote it in decimal units
(1 TB/s = 1e12 bytes/s, 1 GB/s = 1e9 bytes/s), and it is the memory roof of ``figures.roofline``.

Figures are NVIDIA's published boost-clock peaks (a GPU held at a lower clock by its power
limit delivers less). Where a datasheet quotes only the figure "with sparsity", the dense peak
is half of it, rounded down to a whole TFLOP/s (H100 SXM: 1,979 -> 989).

Precisions (as ``LoadedModel.precision`` spells them, plus ``"tf32"``):

* ``"fp32"``: the plain FP32 (CUDA core, non-tensor) peak. PyTorch keeps TF32 off for matmuls
  by default (``torch.backends.cuda.matmul.allow_tf32 = False``, float32 matmul precision
  ``"highest"``) and llem_mlflow never turns it on, so fp32 runs do their matmuls in full
  FP32; comparing them with the TF32 tensor peak would understate utilization ~8-15x.
* ``"tf32"``: the TF32 tensor-core peak, for a process that enables TF32 itself.
* ``"fp16"``, ``"bf16"``: the tensor-core peak with FP32 accumulate (what PyTorch's half and
  bfloat16 matmuls use). On data-centre parts this is the full tensor rate; on GeForce
  RTX 4090 FP32 accumulate runs at half the FP16-accumulate rate, and the half rate is used.

Matching: the name is lower-cased and split into alphanumeric tokens ("NVIDIA A100-SXM4-80GB"
-> ``nvidia a100 sxm4 80gb``); an alias matches when its tokens occur contiguously, so case,
spaces, dashes and underscores do not matter and "L4" does not match "L40S". The longest
matching alias wins ("h200 nvl" over "h200"); a tie between GPUs, a MIG slice (its peak is a
fraction of the board's) or no match gives None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TERA = 1e12
GIGA = 1e9


@dataclass(frozen=True)
class GpuPeaks:
    """Dense per-GPU peaks of one GPU model, in FLOP/s."""

    label: str
    fp32: float  # plain FP32, non-tensor
    tf32: float  # TF32 tensor core, dense
    fp16: float  # FP16 tensor core with FP32 accumulate, dense
    bf16: float  # BF16 tensor core with FP32 accumulate, dense
    memory_bytes_per_s: float  # peak GPU memory (DRAM) bandwidth, bytes/s
    aliases: tuple[str, ...]  # normalized token sequences, e.g. "h100 pcie"
    excludes: frozenset[str] = frozenset()  # tokens that rule the entry out (a different variant)


# Sources, quoted per figure ("*" = with sparsity, halved for the dense value):
# [H100 DS]  NVIDIA H100 Tensor Core GPU datasheet (SXM / PCIe / NVL columns).
# [H200 DS]  NVIDIA H200 Tensor Core GPU datasheet (SXM / NVL columns).
# [A100 DS]  NVIDIA A100 Tensor Core GPU datasheet (40GB/80GB PCIe and SXM columns).
# [L40S DS]  NVIDIA L40S datasheet.  [L4 DS] NVIDIA L4 datasheet.  [A10 DS] NVIDIA A10 datasheet.
# [Ada WP]   NVIDIA Ada Lovelace GPU architecture whitepaper, appendix table for GeForce RTX 4090.
# Memory bandwidth ("GPU memory bandwidth" rows of the same datasheets; [RTX 4090] NVIDIA's GeForce RTX 4090
# specifications, 1,008 GB/s) was checked by searching public text: H100 PCIe against NVIDIA's own
# H100 PCIe product brief (PB-11133-001: "greater than 2,000 gigabytes per second"); H200 (4.8 TB/s, SXM and
# NVL), H100 SXM (3.35 TB/s), H100 NVL (3.9 TB/s), A100 80GB SXM (2,039 GB/s), A100 40GB (1,555 GB/s),
# L40S (864 GB/s), L4 (300 GB/s), A10 (600 GB/s) and RTX 4090 (1,008 GB/s) against secondary pages that quote
# the datasheets (vendor and reseller spec tables, cloud docs), each agreeing; A100 80GB PCIe (1,935 GB/s) is
# from the A100 datasheet's PCIe column and was not found in searchable text: unverified.
GPUS: tuple[GpuPeaks, ...] = (
    GpuPeaks(
        label="H200 SXM",
        fp32=67 * TERA,  # [H200 DS] FP32 67 TFLOPS
        tf32=494 * TERA,  # [H200 DS] TF32 Tensor Core 989* TFLOPS
        fp16=989 * TERA,  # [H200 DS] FP16 Tensor Core 1,979* TFLOPS
        bf16=989 * TERA,  # [H200 DS] BF16 Tensor Core 1,979* TFLOPS
        memory_bytes_per_s=4.8 * TERA,  # [H200 DS] GPU memory bandwidth 4.8TB/s
        aliases=("h200", "h200 sxm", "h200 sxm5"),  # NVML: "NVIDIA H200"
    ),
    GpuPeaks(
        label="H200 NVL",
        fp32=60 * TERA,  # [H200 DS] FP32 60 TFLOPS
        tf32=417 * TERA,  # [H200 DS] TF32 Tensor Core 835* TFLOPS
        fp16=835 * TERA,  # [H200 DS] FP16 Tensor Core 1,671* TFLOPS
        bf16=835 * TERA,  # [H200 DS] BF16 Tensor Core 1,671* TFLOPS
        memory_bytes_per_s=4.8 * TERA,  # [H200 DS] NVL GPU memory bandwidth 4.8TB/s
        aliases=("h200 nvl",),  # NVML: "NVIDIA H200 NVL"
    ),
    GpuPeaks(
        label="H100 SXM",
        fp32=67 * TERA,  # [H100 DS] SXM FP32 67 TFLOPS
        tf32=494 * TERA,  # [H100 DS] SXM TF32 Tensor Core 989* TFLOPS
        fp16=989 * TERA,  # [H100 DS] SXM FP16 Tensor Core 1,979* TFLOPS
        bf16=989 * TERA,  # [H100 DS] SXM BF16 Tensor Core 1,979* TFLOPS
        memory_bytes_per_s=3.35 * TERA,  # [H100 DS] SXM GPU memory bandwidth 3.35TB/s
        aliases=("h100 80gb hbm3", "h100 sxm", "h100 sxm5"),  # NVML: "NVIDIA H100 80GB HBM3"
    ),
    GpuPeaks(
        label="H100 PCIe",
        fp32=51 * TERA,  # [H100 DS] PCIe FP32 51 TFLOPS
        tf32=378 * TERA,  # [H100 DS] PCIe TF32 Tensor Core 756* TFLOPS
        fp16=756 * TERA,  # [H100 DS] PCIe FP16 Tensor Core 1,513* TFLOPS
        bf16=756 * TERA,  # [H100 DS] PCIe BF16 Tensor Core 1,513* TFLOPS
        memory_bytes_per_s=2.0 * TERA,  # [H100 DS] PCIe GPU memory bandwidth 2TB/s
        aliases=("h100 pcie",),  # NVML: "NVIDIA H100 PCIe"
    ),
    GpuPeaks(
        label="H100 NVL",
        fp32=60 * TERA,  # [H100 DS] NVL FP32 60 TFLOPS
        tf32=417 * TERA,  # [H100 DS] NVL TF32 Tensor Core 835* TFLOPS
        fp16=835 * TERA,  # [H100 DS] NVL FP16 Tensor Core 1,671* TFLOPS
        bf16=835 * TERA,  # [H100 DS] NVL BF16 Tensor Core 1,671* TFLOPS
        memory_bytes_per_s=3.9 * TERA,  # [H100 DS] NVL GPU memory bandwidth 3.9TB/s
        aliases=("h100 nvl",),  # NVML: "NVIDIA H100 NVL"
    ),
    GpuPeaks(
        label="A100 SXM 80GB",
        fp32=19.5 * TERA,  # [A100 DS] FP32 19.5 TFLOPS
        tf32=156 * TERA,  # [A100 DS] TF32 Tensor Core 156 | 312* TFLOPS
        fp16=312 * TERA,  # [A100 DS] FP16 Tensor Core 312 | 624* TFLOPS
        bf16=312 * TERA,  # [A100 DS] BF16 Tensor Core 312 | 624* TFLOPS
        memory_bytes_per_s=2039 * GIGA,  # [A100 DS] 80GB SXM GPU memory bandwidth 2,039GB/s
        aliases=("a100 sxm4 80gb", "a100 sxm 80gb"),  # NVML: "NVIDIA A100-SXM4-80GB"
    ),
    GpuPeaks(
        label="A100 SXM 40GB",
        fp32=19.5 * TERA,  # [A100 DS] as above
        tf32=156 * TERA,  # [A100 DS]
        fp16=312 * TERA,  # [A100 DS]
        bf16=312 * TERA,  # [A100 DS]
        memory_bytes_per_s=1555 * GIGA,  # [A100 DS] 40GB GPU memory bandwidth 1,555GB/s
        aliases=("a100 sxm4 40gb", "a100 sxm 40gb"),  # NVML: "NVIDIA A100-SXM4-40GB"
    ),
    GpuPeaks(
        label="A100 PCIe 80GB",
        fp32=19.5 * TERA,  # [A100 DS] same compute peaks in the PCIe columns
        tf32=156 * TERA,  # [A100 DS]
        fp16=312 * TERA,  # [A100 DS]
        bf16=312 * TERA,  # [A100 DS]
        memory_bytes_per_s=1935 * GIGA,  # [A100 DS] 80GB PCIe GPU memory bandwidth 1,935GB/s (unverified)
        aliases=("a100 80gb pcie", "a100 pcie 80gb"),  # NVML: "NVIDIA A100 80GB PCIe"
    ),
    GpuPeaks(
        label="A100 PCIe 40GB",
        fp32=19.5 * TERA,  # [A100 DS]
        tf32=156 * TERA,  # [A100 DS]
        fp16=312 * TERA,  # [A100 DS]
        bf16=312 * TERA,  # [A100 DS]
        memory_bytes_per_s=1555 * GIGA,  # [A100 DS] 40GB GPU memory bandwidth 1,555GB/s
        aliases=("a100 pcie 40gb", "a100 40gb pcie"),  # NVML: "NVIDIA A100-PCIE-40GB"
    ),
    GpuPeaks(
        label="L40S",
        fp32=91.6 * TERA,  # [L40S DS] FP32 91.6 TFLOPS
        tf32=183 * TERA,  # [L40S DS] TF32 Tensor Core 183 | 366* TFLOPS
        fp16=362.05 * TERA,  # [L40S DS] FP16 Tensor Core 362.05 | 733* TFLOPS
        bf16=362.05 * TERA,  # [L40S DS] BF16 Tensor Core 362.05 | 733* TFLOPS
        memory_bytes_per_s=864 * GIGA,  # [L40S DS] GPU memory bandwidth 864GB/s
        aliases=("l40s",),  # NVML: "NVIDIA L40S"
    ),
    GpuPeaks(
        label="L4",
        fp32=30.3 * TERA,  # [L4 DS] FP32 30.3 TFLOPS
        tf32=60 * TERA,  # [L4 DS] TF32 Tensor Core 120* TFLOPS
        fp16=121 * TERA,  # [L4 DS] FP16 Tensor Core 242* TFLOPS
        bf16=121 * TERA,  # [L4 DS] BF16 Tensor Core 242* TFLOPS
        memory_bytes_per_s=300 * GIGA,  # [L4 DS] GPU memory bandwidth 300GB/s
        aliases=("l4",),  # NVML: "NVIDIA L4"
    ),
    GpuPeaks(
        label="A10",
        fp32=31.2 * TERA,  # [A10 DS] FP32 31.2 TFLOPS
        tf32=62.5 * TERA,  # [A10 DS] TF32 Tensor Core 62.5 | 125* TFLOPS
        fp16=125 * TERA,  # [A10 DS] FP16 Tensor Core 125 | 250* TFLOPS
        bf16=125 * TERA,  # [A10 DS] BF16 Tensor Core 125 | 250* TFLOPS
        memory_bytes_per_s=600 * GIGA,  # [A10 DS] GPU memory bandwidth 600GB/s
        aliases=("a10",),  # NVML: "NVIDIA A10" (not the A10G, a different part)
    ),
    GpuPeaks(
        label="GeForce RTX 4090",
        fp32=82.6 * TERA,  # [Ada WP] peak FP32 82.6 TFLOPS
        tf32=82.6 * TERA,  # [Ada WP] peak TF32 Tensor 82.6 / 165.2* TFLOPS
        fp16=165.2 * TERA,  # [Ada WP] FP16 Tensor with FP32 accumulate 165.2 / 330.4* (FP16 acc.: 330.3)
        bf16=165.2 * TERA,  # [Ada WP] BF16 Tensor with FP32 accumulate 165.2 / 330.4* TFLOPS
        memory_bytes_per_s=1008 * GIGA,  # [RTX 4090] memory bandwidth 1,008 GB/s
        aliases=("rtx 4090",),  # NVML: "NVIDIA GeForce RTX 4090"
        excludes=frozenset({"d", "laptop", "mobile"}),  # RTX 4090 D / Laptop GPU: other chips
    ),
)

_PRECISIONS = {
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "tf32": "tf32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
}


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9]+", text.lower()))


def _contains(tokens: tuple[str, ...], part: tuple[str, ...]) -> bool:
    n = len(part)
    return n > 0 and any(tokens[i : i + n] == part for i in range(len(tokens) - n + 1))


def gpu_peaks(gpu_name: str) -> GpuPeaks | None:
    """The table entry for an NVML GPU name (see the module docstring for matching), or None."""
    tokens = _tokens(gpu_name)
    if "mig" in tokens:
        return None
    best: list[GpuPeaks] = []
    best_len = 0
    for gpu in GPUS:
        if gpu.excludes & set(tokens):
            continue
        lengths = [len(a) for a in map(_tokens, gpu.aliases) if _contains(tokens, a)]
        if not lengths:
            continue
        longest = max(lengths)
        if longest > best_len:
            best, best_len = [gpu], longest
        elif longest == best_len:
            best.append(gpu)
    return best[0] if len(best) == 1 else None


def peak_flops(gpu_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one GPU at ``precision`` (fp32, tf32, fp16, bf16); None when unknown.

    ``fp32`` is the plain FP32 (non-tensor) peak; see the module docstring for why.
    Also accepts ``float32``/``float16``/``bfloat16``/``half`` and a ``torch.`` prefix.
    """
    key = precision.strip().lower().removeprefix("torch.")
    kind = _PRECISIONS.get(key)
    gpu = gpu_peaks(gpu_name)
    if kind is None or gpu is None:
        return None
    value: float = getattr(gpu, kind)
    return value


def peak_memory_bandwidth(gpu_name: str) -> float | None:
    """Peak memory (DRAM) bandwidth of one GPU in bytes/s; None for a GPU not in the table or a MIG slice."""
    gpu = gpu_peaks(gpu_name)
    return gpu.memory_bytes_per_s if gpu is not None else None
