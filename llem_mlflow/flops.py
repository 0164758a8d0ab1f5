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
"""

from __future__ import annotations

from llem_mlflow.protocols import BatchStats, ModelShape

FLOPS_METHOD = "forward_kv_cache_matmul_v1"


def attended_pairs(padded_input_len: int, new_tokens: int) -> int:
    """(query, key) pairs attended in one layer for one row: causal prefill plus decode steps."""
    length = padded_input_len
    prefill = length * (length + 1) // 2
    steps = max(new_tokens - 1, 0)
    decode = steps * length + steps * (steps + 1) // 2
    return prefill + decode


def batch_flops(shape: ModelShape, stats: BatchStats) -> float:
    """Forward FLOPs of one generate() call (see the module docstring)."""
    if stats.new_tokens <= 0:
        return 0.0
    positions = stats.padded_input_len + stats.new_tokens - 1
    body = 2 * shape.body_matmul_params * positions
    head = 2 * shape.lm_head_params * stats.new_tokens
    attention = shape.n_layers * 4 * shape.attn_dim * attended_pairs(stats.padded_input_len, stats.new_tokens)
    return float(stats.batch_size * (body + head + attention))


def estimate_generation_flops(shape: ModelShape, batches: list[BatchStats]) -> float:
    """Total forward FLOPs of all ``batches`` generated with a model of ``shape``."""
    return sum((batch_flops(shape, stats) for stats in batches), 0.0)
