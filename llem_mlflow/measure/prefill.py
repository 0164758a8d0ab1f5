"""Isolated prefill: whole passes of one-token ``generate()`` calls over every batch, in their own window.

After one unmeasured pass over the first batch (the one-token path's own warm-up), passes over every
batch repeat inside one counter window until it spans ``PREFILL_MIN_S`` (20 counter updates) or
``PREFILL_MAX_PASSES`` passes ran. Returns the ``PrefillWindow``; the figures come later.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from llem_mlflow.measure import counters
from llem_mlflow.measure.counters import CounterWindow
from llem_mlflow.measure.progress import Progress
from llem_mlflow.protocols import Backend, GpuDevice

#: Isolated prefill: keep making passes until the window spans this many seconds (20 counter updates).
PREFILL_MIN_S = 2.0
PREFILL_MAX_PASSES = 1000


@dataclass(frozen=True)
class PrefillWindow:
    """Isolated prefill: ``passes`` passes over every batch with one new token, in one counter window."""

    passes: int
    batches_per_pass: int
    input_tokens_per_pass: int
    window: CounterWindow


def isolated_prefill(
    backend: Backend,
    devices: Sequence[GpuDevice],
    groups: list[list[list[int]]],
    show: Progress,
) -> PrefillWindow:
    """Whole passes of ``generate(max_new_tokens=1)`` over every batch, until the window is >= 2 s.

    One unmeasured pass over the first batch comes first (the one-token path's own warm-up).
    """
    show.stage(f"isolated prefill: passes with one new token, at least {PREFILL_MIN_S:g} s")
    backend.generate(groups[0], 1)
    passes = 0
    tokens = 0

    def body() -> None:
        nonlocal passes, tokens
        started = time.perf_counter()
        while passes < PREFILL_MAX_PASSES and (not passes or time.perf_counter() - started < PREFILL_MIN_S):
            tokens = sum(backend.generate(group, 1).input_tokens for group in groups)
            passes += 1
            backend.synchronize()

    _, window = counters.measure_window(devices, backend.synchronize, body, allow_unknown=True)
    return PrefillWindow(
        passes=passes, batches_per_pass=len(groups), input_tokens_per_pass=tokens, window=window
    )
