"""Steady state: which leading batches of a cycle are its ramp, by a fixed, documented rule.

With ``measurement_methodology: steady_state`` the energy counter is also read at every batch
boundary (synced; the host already waits for each batch's tokens), and each cycle's figures come from
the counter between the first steady batch's start and the window's end. The rule:

    batch power = sum over GPUs of the mean trace power over the batch (its start to the next start);
    ramp = the leading batches before the first one whose power reaches ``RAMP_FRACTION`` (95%) of the
    median batch power of the cycle; at most half of the cycle's batches are trimmed.

A GPU that idled (the baseline, a cool-down) starts the next batch at low clocks and power; the
ramp is those batches. A cycle of one batch cannot be trimmed; nor can batches without trace
samples (their power is unknown: the ramp stops there). Pure Python.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from llem_mlflow.measure.trace import PowerTrace

#: A batch is steady once its power reaches this fraction of the cycle's median batch power.
RAMP_FRACTION = 0.95
RULE = (
    "steady_state: counter read at every batch boundary; each cycle's leading batches whose mean trace "
    f"power is below {RAMP_FRACTION:.0%} of the cycle's median batch power are the ramp (at most half of "
    "the batches) and are left out; figures cover the rest"
)


def batch_power_w(
    trace: PowerTrace, gpus: Sequence[int], starts_s: Sequence[float], end_s: float
) -> list[float | None]:
    """Mean trace power of each batch (summed over ``gpus``); None when a GPU has no sample in it."""
    if not gpus:
        return [None] * len(starts_s)
    edges = [*starts_s, end_s]
    powers: list[float | None] = []
    for i, (start, stop) in enumerate(zip(edges, edges[1:], strict=False)):
        last = i == len(starts_s) - 1
        total: float | None = 0.0
        for gpu in gpus:  # a batch holds [its start, the next start); the last one also its end
            gpu_w = trace.powers_between(gpu, start, stop, include_end=last)  # bisected: O(log n + batch)
            total = None if not gpu_w or total is None else total + statistics.fmean(gpu_w)
        powers.append(total)
    return powers


def ramp_batches(powers: Sequence[float | None]) -> int:
    """How many leading batches are ramp (see the module docstring); 0 when nothing can be judged."""
    known = [p for p in powers if p is not None]
    if len(powers) < 2 or not known:
        return 0
    threshold = RAMP_FRACTION * statistics.median(known)
    most = len(powers) // 2
    for index, power in enumerate(powers[:most]):
        if power is None or power >= threshold:
            return index
    return most
