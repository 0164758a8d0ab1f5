"""The forward-FLOPs estimate of generate() with a KV cache, checked by hand."""

from __future__ import annotations

from llem_mlflow.flops import FLOPS_METHOD, attended_pairs, batch_flops, estimate_generation_flops
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


def test_attended_pairs_matches_a_step_by_step_count() -> None:
    for length in (1, 5, 17):
        for new in (1, 2, 9):
            prefill = sum(range(1, length + 1))
            decode = sum(length + step for step in range(1, new))
            assert attended_pairs(length, new) == prefill + decode


def test_empty_workload_and_zero_new_tokens_are_zero() -> None:
    assert estimate_generation_flops(SHAPE, []) == 0.0
    assert batch_flops(SHAPE, stats(8, 0, 4)) == 0.0


def test_flops_scale_with_batch_size() -> None:
    one = batch_flops(SHAPE, stats(7, 5, 1))
    assert batch_flops(SHAPE, stats(7, 5, 3)) == 3 * one


def test_method_is_named() -> None:
    assert isinstance(FLOPS_METHOD, str) and FLOPS_METHOD
