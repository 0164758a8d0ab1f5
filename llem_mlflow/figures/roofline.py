"""Bytes a ``generate()`` workload moves through GPU memory, and memory-bandwidth utilization (pure Python).

Decode is memory-bound: each step does little arithmetic per weight byte, so its roof is the GPU's memory
bandwidth, not its FLOP/s (``mfu``). This module counts the bytes the way ``flops`` counts FLOPs, per batch
of ``B`` rows left-padded to length ``L`` that generates ``T`` new tokens (``S = T - 1`` decode steps), at
``e`` bytes per element (the run's precision: 4 for fp32, 2 for fp16 and bf16; the KV cache is kept at the
model's dtype).

Method (``BYTES_METHOD``), with ``W = (body_matmul_params + lm_head_params) x e`` (the 2-D matmul weights
``flops`` counts, the LM head once whether or not it is tied to the input embeddings) and
``kv = 2 x n_layers x kv_dim x e`` (the K and V of one position in every layer):

* prefill: ``W + B x L x kv``: every weight read once for the whole batch (a batched matmul reads its
  weight once, however many rows), and the K and V of the ``L`` prompt positions written to the cache.
* decode step ``t = 1 .. S``: ``W + B x (L + t) x kv``: every weight read once, the ``L + t - 1`` cached
  positions read and the new one written: ``L + t`` positions, the keys a step attends in ``flops``.
  Summed over the steps: ``S x W + B x kv x (S L + S (S + 1) / 2)`` (``flops.decode_pairs``).

Padding counts as moved (the GPU does it). Left out, each small beside the weights at the batch sizes this
tool runs: activations and attention intermediates (a few ``B x hidden`` vectors per layer; the fused
attention kernels keep scores on chip), the logits (``B x vocab`` per step), 1-D weights (norms, biases),
the embedding gather (it reads ``B`` rows of the table, not the table: the whole table is counted only where
it is the LM head), and the position embeddings. The count assumes no weight stays in L2 cache from one step
to the next (true once the weights are many times the L2 size: 50 MB on an H100/H200). So the bytes are a
lower bound on DRAM traffic and the utilization a slight underestimate.

``kv_dim`` is ``kv_heads x head_dim`` (``ModelShape.kv_dim``, from the model's config); a shape without it
(results written before it was recorded) falls back to the width of the queries (``attn_dim``): exact for
multi-head attention (GPT-2), an upper bound on the KV term of a grouped-query model (TinyLlama: 8x).

Utilization (``bandwidth_util``): ``bytes / (seconds x peak bytes/s x GPUs)``, as a fraction, each GPU
assumed to have the same peak. The result reports it for decode only (``decode_bandwidth_util``): decode
bytes of the batches with step timings over the sum of their decode steps' seconds, the memory roofline of
batch-1 decode. A split model (``device_map``) runs its GPUs one after another, so that figure is at most
``1 / GPUs`` there, as MFU is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from llem_mlflow.figures.flops import decode_pairs
from llem_mlflow.protocols import BatchStats, ModelShape

BYTES_METHOD = "weights_once_per_pass_plus_kv_cache_v1"

_ELEMENT_BYTES = {
    "fp32": 4,
    "float32": 4,
    "float": 4,
    "tf32": 4,  # TF32 is a matmul mode; the tensors are stored as fp32
    "fp16": 2,
    "float16": 2,
    "half": 2,
    "bf16": 2,
    "bfloat16": 2,
}


@dataclass(frozen=True)
class PhaseBytes:
    """Bytes a workload moves through GPU memory, split into prefill and decode (see the module docstring)."""

    prefill: float
    decode: float

    @property
    def total(self) -> float:
        """``prefill + decode``."""
        return self.prefill + self.decode


def element_bytes(precision: str) -> int | None:
    """Bytes per weight and cache element at ``precision`` (``fp32``, ``fp16``, ``bf16``...), or None."""
    return _ELEMENT_BYTES.get(precision.strip().lower().removeprefix("torch."))


def weight_bytes(shape: ModelShape, bytes_per_element: int) -> int:
    """Bytes of the matmul weights one forward pass reads: ``(body_matmul_params + lm_head_params) x e``."""
    return (shape.body_matmul_params + shape.lm_head_params) * bytes_per_element


def kv_bytes_per_position(shape: ModelShape, bytes_per_element: int, kv_dim: int | None = None) -> int:
    """Bytes of the K and V of one position in every layer: ``2 x n_layers x kv_dim x e``.

    ``kv_dim`` (``kv_heads x head_dim``) defaults to ``shape.kv_dim``, else ``shape.attn_dim`` (multi-head).
    """
    return 2 * shape.n_layers * (kv_dim or shape.kv_dim or shape.attn_dim) * bytes_per_element


def _phase_ints(shape: ModelShape, stats: BatchStats, e: int, kv_dim: int | None) -> tuple[int, int]:
    """Exact (prefill, decode) bytes of one generate() call, as integers."""
    if stats.new_tokens <= 0:
        return 0, 0
    weights, kv = weight_bytes(shape, e), kv_bytes_per_position(shape, e, kv_dim)
    length, steps = stats.padded_input_len, stats.new_tokens - 1
    prefill = weights + stats.batch_size * length * kv
    decode = steps * weights + stats.batch_size * kv * decode_pairs(length, stats.new_tokens)
    return prefill, decode


def estimate_phase_bytes(
    shape: ModelShape, batches: Sequence[BatchStats], bytes_per_element: int, kv_dim: int | None = None
) -> PhaseBytes:
    """Prefill and decode bytes of all ``batches`` generated with a model of ``shape`` (module docstring)."""
    if bytes_per_element <= 0:
        raise ValueError(f"bytes per element must be positive, not {bytes_per_element}")
    prefill = decode = 0
    for stats in batches:
        p, d = _phase_ints(shape, stats, bytes_per_element, kv_dim)
        prefill += p
        decode += d
    return PhaseBytes(prefill=float(prefill), decode=float(decode))


def bandwidth_util(
    bytes_moved: float, seconds: float, peak_bytes_per_s: float | None, gpus: int = 1
) -> float | None:
    """Memory-bandwidth utilization: ``bytes_moved / seconds`` over ``gpus x peak_bytes_per_s``, a fraction.

    None when the peak is unknown (or not positive) or ``seconds <= 0``.
    """
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, not {gpus}")
    if peak_bytes_per_s is None or not peak_bytes_per_s > 0 or not seconds > 0:
        return None
    if not (math.isfinite(peak_bytes_per_s) and math.isfinite(seconds)):
        return None
    return bytes_moved / seconds / (peak_bytes_per_s * gpus)


def step_timed(stats: BatchStats) -> bool:
    """Whether a batch has every decode step's time (``prefill_s`` and ``new_tokens - 1`` step times)."""
    return stats.prefill_s is not None and len(stats.decode_step_s) == max(stats.new_tokens - 1, 0)


def decode_bandwidth_util(
    shape: ModelShape,
    batches: Sequence[BatchStats],
    bytes_per_element: int,
    peak_bytes_per_s: float | None,
    gpus: int = 1,
    kv_dim: int | None = None,
) -> float | None:
    """Decode's memory-bandwidth utilization: decode bytes of the step-timed batches over their decode time.

    None when no batch has decode step timings (or their sum is 0), or the peak is unknown.
    """
    timed = [b for b in batches if step_timed(b)]
    seconds = math.fsum(s for b in timed for s in b.decode_step_s)
    moved = estimate_phase_bytes(shape, timed, bytes_per_element, kv_dim).decode
    return bandwidth_util(moved, seconds, peak_bytes_per_s, gpus)
