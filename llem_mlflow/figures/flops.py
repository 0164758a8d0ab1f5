"""The forward-FLOPs estimate of a ``generate()`` workload (pure arithmetic, no torch).

Method (``FLOPS_METHOD``): forward FLOPs of greedy ``generate()`` with a KV cache, one
multiply-add counted as 2 FLOPs, per batch of ``B`` rows left-padded to length ``L``
that generates ``T`` new tokens:

* body matmuls: ``2 * body_matmul_params * (L + T - 1)`` per row. The prefill processes
  ``L`` positions, then each of the ``T - 1`` decode steps processes one position (the
  last new token is produced by the logits of the previous step, never fed back).
* LM head: ``2 * lm_head_params * T`` per row. Logits are computed only for the last
  position in the prefill (transformers' ``logits_to_keep``) and once per decode step.
* attention scores and weighted values: ``4 * attn_dim * C`` per layer and row, where
  ``C`` is the number of (query, key) pairs: the causal prefill attends
  ``1 + 2 + ... + L = L (L + 1) / 2`` pairs, and decode step ``t = 1 .. T - 1`` attends
  ``L + t`` keys.

Padding counts as processed (the GPU does the work). Embedding lookups, norms,
activations and softmax are ignored (not matmuls).

Attention convention: the causal half, ``L (L + 1) / 2`` (query, key) pairs per prefill
row, not the full padded ``L x L`` square, and padded positions count as queries and keys
like real ones. This is the work a causal model needs; a kernel given an explicit padding
mask may compute the whole square and discard the masked half, which this does not count.

Phases (``estimate_phase_flops``) split exactly these terms, nothing added or dropped:

* prefill: the ``L`` prompt positions through the body, the LM head once (the logits of
  the first new token) and the causal prefill attention (``L (L + 1) / 2`` pairs);
* decode: the ``T - 1`` later steps, each one position through the body and the LM head
  plus attention over ``L + t`` keys.

Each phase is summed exactly in integers and converted to float once, and
``estimate_generation_flops`` returns ``prefill + decode``, so the two phases always add up
to the total bit for bit.

Derived ratios: ``mfu`` (achieved FLOP/s over the hardware peak, see ``llem_mlflow.figures.peaks``)
and ``joules_per_tflop``. The memory side (bytes moved per phase, bandwidth utilization, the roof of
memory-bound decode) is ``llem_mlflow.figures.roofline``, counted per batch and phase the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llem_mlflow.protocols import BatchStats, ModelShape

FLOPS_METHOD = "forward_kv_cache_matmul_v1"


@dataclass(frozen=True)
class PhaseFlops:
    """Forward FLOPs of a workload split into prefill and decode (see the module docstring)."""

    prefill: float
    decode: float

    @property
    def total(self) -> float:
        """``prefill + decode``: what ``estimate_generation_flops`` returns."""
        return self.prefill + self.decode


def prefill_pairs(padded_input_len: int) -> int:
    """(query, key) pairs of the causal prefill in one layer for one row: ``L (L + 1) / 2``."""
    length = padded_input_len
    return length * (length + 1) // 2


def decode_pairs(padded_input_len: int, new_tokens: int) -> int:
    """(query, key) pairs of the decode steps ``t = 1 .. T - 1`` (``L + t`` keys each), one layer and row."""
    steps = max(new_tokens - 1, 0)
    return steps * padded_input_len + steps * (steps + 1) // 2


def _phase_ints(shape: ModelShape, stats: BatchStats) -> tuple[int, int]:
    """Exact (prefill, decode) FLOPs of one generate() call, as integers."""
    if stats.new_tokens <= 0:
        return 0, 0
    length, steps = stats.padded_input_len, stats.new_tokens - 1
    per_pair = shape.n_layers * 4 * shape.attn_dim
    prefill = (
        2 * shape.body_matmul_params * length + 2 * shape.lm_head_params + per_pair * prefill_pairs(length)
    )
    decode = (
        2 * shape.body_matmul_params * steps
        + 2 * shape.lm_head_params * steps
        + per_pair * decode_pairs(length, stats.new_tokens)
    )
    return stats.batch_size * prefill, stats.batch_size * decode


def estimate_phase_flops(shape: ModelShape, batches: list[BatchStats]) -> PhaseFlops:
    """Prefill and decode forward FLOPs of all ``batches`` generated with a model of ``shape``."""
    prefill = decode = 0
    for stats in batches:
        p, d = _phase_ints(shape, stats)
        prefill += p
        decode += d
    return PhaseFlops(prefill=float(prefill), decode=float(decode))


def estimate_generation_flops(shape: ModelShape, batches: list[BatchStats]) -> float:
    """Total forward FLOPs of all ``batches``: ``estimate_phase_flops(...).total``."""
    return estimate_phase_flops(shape, batches).total


def mfu(flops: float, seconds: float, peak_flops_per_s: float | None, gpus: int = 1) -> float | None:
    """Model FLOPs utilization: ``flops / seconds`` over ``gpus x peak_flops_per_s``, as a fraction.

    None when the peak is unknown (or not positive) or ``seconds <= 0``. ``gpus`` is the
    number of GPUs the work ran on, each assumed to have the same peak.
    """
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, not {gpus}")
    if peak_flops_per_s is None or not peak_flops_per_s > 0 or not seconds > 0:
        return None
    if not (math.isfinite(peak_flops_per_s) and math.isfinite(seconds)):
        return None
    return flops / seconds / (peak_flops_per_s * gpus)


def joules_per_tflop(energy_j: float | None, flops: float) -> float | None:
    """Energy per 10^12 FLOPs: ``energy_j / (flops / 1e12)``; None without energy or with ``flops <= 0``.

    A negative energy (a net figure below zero) is passed through, not hidden.
    """
    if energy_j is None or not flops > 0:
        return None
    return energy_j / (flops / 1e12)
