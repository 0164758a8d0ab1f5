"""The forward-FLOPs estimate of generate() with a KV cache, checked by hand."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from llem_mlflow.figures.flops import (
    FLOPS_METHOD,
    PhaseFlops,
    decode_pairs,
    estimate_generation_flops,
    estimate_phase_flops,
    joules_per_tflop,
    mfu,
    prefill_pairs,
)
from llem_mlflow.protocols import BatchStats, ModelShape

SHAPE = ModelShape(body_matmul_params=100, lm_head_params=10, n_layers=2, attn_dim=4, vocab_size=5)


def stats(padded: int, new: int, batch: int) -> BatchStats:
    return BatchStats(
        input_tokens=padded * batch,
        output_tokens=new * batch,
        padded_input_len=padded,
        new_tokens=new,
        batch_size=batch,
    )


def test_hand_computed_example() -> None:
    # Batch 1: L=3, T=2, B=2. Positions processed: 3 + 2 - 1 = 4 -> body 2*100*4 = 800.
    # Head: 2*10*2 = 40. Attended pairs: prefill 1+2+3 = 6, decode step 1 attends 4 -> 10;
    # attention: 2 layers * 4 * 4 * 10 = 320. Per row 1160, two rows 2320.
    # Batch 2: L=1, T=1, B=1: body 2*100*1 = 200, head 20, pairs 1 -> 2*4*4*1 = 32: 252.
    assert estimate_generation_flops(SHAPE, [stats(3, 2, 2), stats(1, 1, 1)]) == 2320.0 + 252.0


def test_attended_pairs_match_a_step_by_step_count() -> None:
    for length in (1, 5, 17):
        for new in (1, 2, 9):
            assert prefill_pairs(length) == sum(range(1, length + 1))
            assert decode_pairs(length, new) == sum(length + step for step in range(1, new))


def test_empty_workload_and_zero_new_tokens_are_zero() -> None:
    assert estimate_generation_flops(SHAPE, []) == 0.0
    assert estimate_generation_flops(SHAPE, [stats(8, 0, 4)]) == 0.0


def test_flops_scale_with_batch_size() -> None:
    one = estimate_generation_flops(SHAPE, [stats(7, 5, 1)])
    assert estimate_generation_flops(SHAPE, [stats(7, 5, 3)]) == 3 * one


def test_method_is_named() -> None:
    assert isinstance(FLOPS_METHOD, str) and FLOPS_METHOD


# ---------------------------------------------------------------- phases


def test_phase_split_by_hand() -> None:
    # SHAPE: body 100, head 10, 2 layers, attn_dim 4 -> one (query, key) pair costs 2 * 4 * 4 = 32.
    # Batch 1: L=3, T=2, B=2.
    #   prefill per row: body 2*100*3 = 600, head once 2*10 = 20, pairs 1+2+3 = 6 -> 192: 812; x2 = 1624.
    #   decode per row (1 step): body 2*100*1 = 200, head 20, step 1 attends 3+1 = 4 keys -> 128:
    #   348; x2 = 696. (812 + 348 = 1160, the per-row total of test_hand_computed_example.)
    # Batch 2: L=1, T=1, B=1: prefill 200 + 20 + 32*1 = 252, decode 0 (no step after the first token).
    phases = estimate_phase_flops(SHAPE, [stats(3, 2, 2), stats(1, 1, 1)])
    assert phases == PhaseFlops(prefill=1624.0 + 252.0, decode=696.0)
    assert phases.total == 2572.0 == estimate_generation_flops(SHAPE, [stats(3, 2, 2), stats(1, 1, 1)])


def test_decode_attention_grows_with_each_step() -> None:
    # L=2, T=3, B=1. Prefill: body 2*100*2 = 400, head 20, pairs 1+2 = 3 -> 96: 516.
    # Decode, 2 steps: body 2*100*2 = 400, head 2*10*2 = 40, keys (2+1) + (2+2) = 7 -> 224: 664.
    phases = estimate_phase_flops(SHAPE, [stats(2, 3, 1)])
    assert (phases.prefill, phases.decode) == (516.0, 664.0)
    assert prefill_pairs(2) == 3 and decode_pairs(2, 3) == 7


def test_prefill_attention_is_the_causal_half_of_the_padded_square() -> None:
    # L=4 padded prompt: 1+2+3+4 = 10 pairs, not 16; padding is counted (the shape says L, not the
    # real tokens). A shape with no matmul parameters isolates attention: 1 layer * 4 * 1 * 10 = 40.
    attention_only = ModelShape(body_matmul_params=0, lm_head_params=0, n_layers=1, attn_dim=1, vocab_size=1)
    padded = BatchStats(input_tokens=1, output_tokens=1, padded_input_len=4, new_tokens=1, batch_size=1)
    assert estimate_phase_flops(attention_only, [padded]) == PhaseFlops(prefill=40.0, decode=0.0)


def _reference_phases(shape: ModelShape, batch: BatchStats) -> tuple[int, int]:
    """Step-by-step integer count, independent of the module's closed forms."""
    if batch.new_tokens <= 0:
        return 0, 0
    pair = 4 * shape.n_layers * shape.attn_dim
    length = batch.padded_input_len
    prefill = 2 * shape.body_matmul_params * length + 2 * shape.lm_head_params
    prefill += pair * sum(range(1, length + 1))
    decode = 0
    for step in range(1, batch.new_tokens):
        decode += 2 * shape.body_matmul_params + 2 * shape.lm_head_params + pair * (length + step)
    return batch.batch_size * prefill, batch.batch_size * decode


def test_phases_add_up_to_the_total_exactly_on_random_workloads() -> None:
    rng = random.Random(20240611)
    for _ in range(200):
        shape = ModelShape(
            body_matmul_params=rng.randint(1, 80_000_000_000),
            lm_head_params=rng.randint(0, 1_000_000_000),
            n_layers=rng.randint(1, 128),
            attn_dim=rng.choice([64, 768, 4096, 8192]),
            vocab_size=rng.randint(1, 256_000),
        )
        batches = [
            stats(rng.randint(1, 2048), rng.randint(0, 300), rng.randint(1, 64))
            for _ in range(rng.randint(0, 6))
        ]
        phases = estimate_phase_flops(shape, batches)
        total = estimate_generation_flops(shape, batches)
        assert phases.prefill + phases.decode == phases.total == total
        refs = [_reference_phases(shape, b) for b in batches]
        assert phases.prefill == float(sum(p for p, _ in refs))
        assert phases.decode == float(sum(d for _, d in refs))
        assert math.isclose(total, sum(estimate_generation_flops(shape, [b]) for b in batches), rel_tol=1e-12)


def test_zero_new_tokens_has_no_phases() -> None:
    assert estimate_phase_flops(SHAPE, [stats(8, 0, 4)]) == PhaseFlops(0.0, 0.0)
    assert estimate_phase_flops(SHAPE, []).total == 0.0


def test_phase_flops_is_frozen() -> None:
    phases = PhaseFlops(prefill=1.0, decode=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        phases.prefill = 3.0  # type: ignore[misc]
    assert phases.total == 3.0


# ---------------------------------------------------------------- ratios


def test_mfu_arithmetic() -> None:
    # 989e12 FLOPs in 2 s on one 989e12 FLOP/s GPU: half the peak.
    assert mfu(989e12, 2.0, 989e12) == 0.5
    # 3e15 FLOPs in 1.5 s over 4 GPUs of 1e15: 2e15 / 4e15 = 0.5; on 1 GPU it would be 2.0.
    assert mfu(3e15, 1.5, 1e15, gpus=4) == 0.5
    assert mfu(3e15, 1.5, 1e15) == 2.0


def test_mfu_is_none_without_a_peak_or_time() -> None:
    assert mfu(1e12, 1.0, None) is None
    assert mfu(1e12, 0.0, 1e12) is None
    assert mfu(1e12, -1.0, 1e12) is None
    assert mfu(1e12, 1.0, 0.0) is None
    assert mfu(1e12, math.nan, 1e12) is None


def test_mfu_rejects_no_gpus() -> None:
    with pytest.raises(ValueError, match="gpus"):
        mfu(1e12, 1.0, 1e12, gpus=0)


def test_joules_per_tflop_arithmetic() -> None:
    # 500 J for 2e12 FLOPs = 2 TFLOP: 250 J/TFLOP. 1 J for 4e9 FLOPs = 0.004 TFLOP: 250 J/TFLOP.
    assert joules_per_tflop(500.0, 2e12) == 250.0
    assert joules_per_tflop(1.0, 4e9) == 250.0
    assert joules_per_tflop(-10.0, 1e12) == -10.0  # a negative net energy is shown, not hidden


def test_joules_per_tflop_is_none_without_energy_or_flops() -> None:
    assert joules_per_tflop(None, 1e12) is None
    assert joules_per_tflop(100.0, 0.0) is None
    assert joules_per_tflop(100.0, -5.0) is None
