"""Latency of the measured generation from the backend's step timings (pure Python, no torch).

Each ``BatchStats`` of a timed ``generate()`` call carries ``prefill_s`` (generate() start to the first
token's logits) and ``decode_step_s`` (one entry per decode step, between consecutive tokens' logits).

* **TTFT** (time to first token) = a batch's ``prefill_s``: every row of a batch gets its first token
  from the same forward pass, so there is one TTFT sample per batch (not weighted by rows).
* **ITL** (inter-token latency) = one decode step's time: each step produces one token per row, so
  there is one ITL sample per step and batch, pooled over all batches.
* ``prefill_s`` / ``decode_s``: sums over batches of prefill times and of decode step times; ``steps``:
  the number of decode steps (ITL samples).

Percentiles use **linear interpolation between closest ranks** (numpy's default ``"linear"``,
Hyndman & Fan type 7): for ``n`` sorted values ``x[0..n-1]`` and ``q`` in [0, 100], the rank is
``h = (n - 1) * q / 100``, ``i = floor(h)``, and the percentile is ``x[i] + (h - i) * (x[i + 1] - x[i])``
(``x[n - 1]`` when ``i = n - 1``).

Batches without timings (``prefill_s`` None) are left out; with none timed there is no summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from llem_mlflow.protocols import BatchStats

PERCENTILE_METHOD = "linear"


class LatencySummary(BaseModel):
    """TTFT and inter-token latency of a run, in seconds (see the module docstring for definitions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttft_p50_s: float
    ttft_mean_s: float
    itl_p50_s: float | None  # None when no decode step was timed (one new token per row)
    itl_p90_s: float | None
    itl_p99_s: float | None
    itl_mean_s: float | None
    prefill_s: float  # sum over timed batches
    decode_s: float  # sum of all decode steps
    steps: int  # decode steps timed (ITL samples)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


def summarize_latency(batches: Sequence[BatchStats]) -> LatencySummary | None:
    """TTFT and ITL over the timed ``batches``; None when no batch has timings."""
    timed = [b for b in batches if b.prefill_s is not None]
    if not timed:
        return None
    ttft = [float(b.prefill_s) for b in timed if b.prefill_s is not None]
    itl = [float(step) for b in timed for step in b.decode_step_s]
    return LatencySummary(
        ttft_p50_s=percentile(ttft, 50),
        ttft_mean_s=math.fsum(ttft) / len(ttft),
        itl_p50_s=percentile(itl, 50) if itl else None,
        itl_p90_s=percentile(itl, 90) if itl else None,
        itl_p99_s=percentile(itl, 99) if itl else None,
        itl_mean_s=math.fsum(itl) / len(itl) if itl else None,
        prefill_s=math.fsum(ttft),
        decode_s=math.fsum(itl),
        steps=len(itl),
    )
