"""How a power trace is stored: the ``TraceSample`` record and one GPU's samples as columns.

``ColumnStore`` keeps one GPU's samples in stdlib ``array`` columns (no import cost): timestamp and
power of every sample (16 B), and the slow readings (temperature, clock, utilisation, memory, throttle
reasons, processes) only for the samples that have them, each with its sample's index (56 B; the
sampler takes them every 5th tick). An append older than the last sample marks the store unsorted;
``sort`` puts it in time order once (stable). ``GpuColumns`` is a sorted copy for writers.

An absent optional reading is stored as NaN (float fields) or ``NO_INT`` = -2**63 (int fields): a NaN
reading reads back as None, and an int reading must lie in (-2**63, 2**63).
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TraceSample:
    """One sample of one GPU. ``timestamp_s`` is Unix epoch seconds (wall clock)."""

    timestamp_s: float
    gpu: int  # CUDA index as the process sees it
    power_w: float
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    utilization_pct: float | None = None
    memory_used_b: int | None = None
    throttle_reasons: int | None = None
    compute_processes: int | None = None  # NVML's count on this GPU, this process included


FloatField = Literal["temperature_c", "sm_clock_mhz", "utilization_pct"]
IntField = Literal["memory_used_b", "throttle_reasons", "compute_processes"]
FLOAT_FIELDS: tuple[FloatField, ...] = ("temperature_c", "sm_clock_mhz", "utilization_pct")
INT_FIELDS: tuple[IntField, ...] = ("memory_used_b", "throttle_reasons", "compute_processes")
#: The optional readings of a sample, in ``TraceSample`` order (floats first, then ints).
SLOW_FIELDS: tuple[str, ...] = (*FLOAT_FIELDS, *INT_FIELDS)
SlowValues = tuple[float | None, float | None, float | None, int | None, int | None, int | None]

#: How an absent int reading is stored (``ColumnStore.ints``, ``GpuColumns.ints``).
NO_INT = -(2**63)
_INT_MAX = 2**63 - 1


def slow_values(sample: TraceSample) -> SlowValues | None:
    """The sample's optional readings, or None when it has none."""
    values: SlowValues = (
        sample.temperature_c,
        sample.sm_clock_mhz,
        sample.utilization_pct,
        sample.memory_used_b,
        sample.throttle_reasons,
        sample.compute_processes,
    )
    return None if all(v is None for v in values) else values


def _time_order(times: Sequence[float]) -> list[int]:
    """Indices of ``times`` in stable time order (the one place a GPU's samples get sorted)."""
    return sorted(range(len(times)), key=times.__getitem__)


def _encode_int(name: str, value: int | None) -> int:
    if value is None:
        return NO_INT
    out = int(value)
    if not NO_INT < out <= _INT_MAX:
        raise ValueError(
            f"Trace reading {name}={value} does not fit a signed 64-bit integer (the trace and its Parquet "
            "column store int64); pass None when the value is unknown."
        )
    return out


class ColumnStore:
    """One GPU's samples as columns; slow readings only for the samples that have them."""

    __slots__ = ("floats", "ints", "ordered", "power_w", "slow_at", "time_s")

    def __init__(self) -> None:
        self.time_s: array[float] = array("d")
        self.power_w: array[float] = array("d")
        self.slow_at: array[int] = array("q")  # index of each sample with slow readings, ascending
        self.floats: dict[str, array[float]] = {name: array("d") for name in FLOAT_FIELDS}
        self.ints: dict[str, array[int]] = {name: array("q") for name in INT_FIELDS}
        self.ordered = True

    def append(self, timestamp_s: float, power_w: float, slow: SlowValues | None) -> None:
        """Add one sample; every value is checked before any column grows (columns stay aligned)."""
        t, p = float(timestamp_s), float(power_w)
        if math.isnan(t):
            raise ValueError("A trace sample's timestamp_s is NaN; pass the epoch seconds it was taken at.")
        if slow is not None:
            self._append_slow(slow)
        times = self.time_s
        if times and t < times[-1]:
            self.ordered = False
        times.append(t)
        self.power_w.append(p)

    def _append_slow(self, slow: SlowValues) -> None:
        """The slow readings of the sample about to be appended (all converted before any is stored)."""
        floats = [math.nan if v is None else float(v) for v in slow[:3]]
        ints = [_encode_int(n, v) for n, v in zip(INT_FIELDS, slow[3:], strict=True)]
        if all(map(math.isnan, floats)) and all(v == NO_INT for v in ints):
            return  # nothing known (e.g. NaN for "not read"): no slow record, as for None
        self.slow_at.append(len(self.time_s))
        for float_name, fv in zip(FLOAT_FIELDS, floats, strict=True):
            self.floats[float_name].append(fv)
        for int_name, iv in zip(INT_FIELDS, ints, strict=True):
            self.ints[int_name].append(iv)

    def sort(self) -> None:
        """Put the columns in time order (stable), once, after out-of-order appends."""
        order = _time_order(self.time_s)
        self.time_s = array("d", [self.time_s[i] for i in order])
        self.power_w = array("d", [self.power_w[i] for i in order])
        new_index = array("q", bytes(8 * len(order)))
        for new, old in enumerate(order):
            new_index[old] = new
        moved = [new_index[i] for i in self.slow_at]
        slow_order = sorted(range(len(moved)), key=moved.__getitem__)
        self.slow_at = array("q", [moved[k] for k in slow_order])
        self.floats = {n: array("d", [c[k] for k in slow_order]) for n, c in self.floats.items()}
        self.ints = {n: array("q", [c[k] for k in slow_order]) for n, c in self.ints.items()}
        self.ordered = True

    def index_range(self, start_s: float, end_s: float, include_end: bool = True) -> tuple[int, int]:
        """Indices ``[lo, hi)`` of the samples in ``[start_s, end_s]`` (end excluded if not include_end)."""
        lo = bisect.bisect_left(self.time_s, start_s)
        hi = (bisect.bisect_right if include_end else bisect.bisect_left)(self.time_s, end_s)
        return lo, max(lo, hi)

    def slow_range(self, lo: int, hi: int) -> tuple[int, int]:
        """Indices into the slow columns of the samples ``[lo, hi)`` that have slow readings."""
        return bisect.bisect_left(self.slow_at, lo), bisect.bisect_left(self.slow_at, hi)

    def materialise(self, gpu: int, lo: int, hi: int) -> Iterator[TraceSample]:
        """``TraceSample`` objects of the samples ``[lo, hi)``, in time order."""
        j, end_j = self.slow_range(lo, hi)
        for i in range(lo, hi):
            if j < end_j and self.slow_at[j] == i:
                yield TraceSample(self.time_s[i], gpu, self.power_w[i], *self._slow(j))
                j += 1
            else:
                yield TraceSample(self.time_s[i], gpu, self.power_w[i])

    def _slow(self, j: int) -> SlowValues:
        temperature, clock, utilisation = (self._float(n, j) for n in FLOAT_FIELDS)
        memory, throttle, processes = (self._int(n, j) for n in INT_FIELDS)
        return temperature, clock, utilisation, memory, throttle, processes

    def _float(self, name: str, j: int) -> float | None:
        value = self.floats[name][j]
        return None if math.isnan(value) else value

    def _int(self, name: str, j: int) -> int | None:
        value = self.ints[name][j]
        return None if value == NO_INT else value

    def same_as(self, other: ColumnStore) -> bool:
        """Equal data (NaN, the absent float reading, equals NaN)."""
        return (
            self.time_s == other.time_s
            and self.power_w == other.power_w
            and self.slow_at == other.slow_at
            and self.ints == other.ints
            and all(_same_floats(self.floats[n], other.floats[n]) for n in FLOAT_FIELDS)
        )


def _same_floats(a: array[float], b: array[float]) -> bool:
    return a.tobytes() == b.tobytes() or (
        len(a) == len(b)
        and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True))
    )


@dataclass(frozen=True)
class GpuColumns:
    """A copy of one GPU's columns in time order (for writers such as the Parquet file).

    ``slow_at``: the index of each sample that has slow readings; ``floats`` / ``ints``: those readings,
    one value per ``slow_at`` entry, an absent one as NaN / ``NO_INT``.
    """

    time_s: array[float]
    power_w: array[float]
    slow_at: array[int]
    floats: dict[str, array[float]]
    ints: dict[str, array[int]]
