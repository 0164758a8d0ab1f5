"""Energy split into prefill and decode, apportioned by the power trace.

Each batch's prefill runs from its ``generate()`` start (wall clock, taken right before the call; the
GPU queue is empty then, because the previous batch's tokens were copied to the host) to its first
token's logits (``BatchStats.prefill_s``, CUDA events); decode follows for the sum of its
``decode_step_s``. These spans last milliseconds (prefill of a batch: ~8-45 ms on an H200), far
below the energy counter's ~100 ms update, so the counter cannot split them. The rule:

    phase trace J = sum over its spans of (span seconds x the nearest trace sample's power), per GPU;
    window trace J = trapezoid integral of the trace over the measured windows;
    phase J = counter gross J x phase trace J / window trace J   (scaled down if phases exceed it).

``other_j`` is the rest of the window (host work between batches). The result says ``method`` so a
reader knows it is trace-apportioned, with the trace's limits (instant power samples part of each
period on Hopper; sampling every ``sampling_interval_s``). Pure Python.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.protocols import BatchStats

METHOD = "trace-apportioned: counter gross x (phase spans x nearest trace power) / window trace integral"
Span = tuple[float, float]


@dataclass(frozen=True)
class PhaseSpans:
    """Wall-clock spans of every batch's prefill and decode."""

    prefill: list[Span]
    decode: list[Span]


@dataclass(frozen=True)
class PhaseSplit:
    """Counter energy apportioned to the phases, and the phases' total seconds."""

    prefill_j: float
    decode_j: float
    other_j: float
    prefill_s: float
    decode_s: float


def batch_spans(starts_s: Sequence[float], stats: Sequence[BatchStats]) -> PhaseSpans | None:
    """The spans of each batch from its wall start and its event timings; None if a batch has none."""
    prefill: list[Span] = []
    decode: list[Span] = []
    for start_s, batch in zip(starts_s, stats, strict=True):
        if batch.prefill_s is None:
            return None
        first_token_s = start_s + batch.prefill_s
        prefill.append((start_s, first_token_s))
        decode.append((first_token_s, first_token_s + sum(batch.decode_step_s)))
    return PhaseSpans(prefill=prefill, decode=decode)


def split_energy(
    gross_j: float, trace: PowerTrace, gpus: Sequence[int], windows: Sequence[Span], spans: PhaseSpans
) -> PhaseSplit | None:
    """Apportion ``gross_j`` (all windows) to prefill, decode and other; None without a usable trace."""
    window_j = prefill_j = decode_j = 0.0
    for gpu in gpus:
        parts = [trace.integrate_j(gpu, a, b) for a, b in windows]
        if not trace.count(gpu) or any(p is None for p in parts):
            return None
        window_j += sum(p for p in parts if p is not None)
        times, powers = trace.times_s(gpu), trace.powers_w(gpu)  # columns: no TraceSample objects
        prefill_j += sum((b - a) * _nearest(times, powers, (a + b) / 2) for a, b in spans.prefill)
        decode_j += sum((b - a) * _nearest(times, powers, (a + b) / 2) for a, b in spans.decode)
    if window_j <= 0:
        return None
    scale = gross_j / max(window_j, prefill_j + decode_j)
    prefill, decode = prefill_j * scale, decode_j * scale
    return PhaseSplit(
        prefill_j=prefill,
        decode_j=decode,
        other_j=max(gross_j - prefill - decode, 0.0),
        prefill_s=sum(b - a for a, b in spans.prefill),
        decode_s=sum(b - a for a, b in spans.decode),
    )


def _nearest(times: Sequence[float], powers: Sequence[float], at_s: float) -> float:
    i = bisect.bisect_left(times, at_s)
    if i == 0:
        return powers[0]
    if i == len(times):
        return powers[-1]
    return powers[i] if times[i] - at_s < at_s - times[i - 1] else powers[i - 1]
