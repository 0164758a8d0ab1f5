"""PowerTrace: the sampled time series (absolute timestamps, per GPU) and pure helpers on it.

The trace gives shape, phases and a cross-check; energy itself comes from the counter.

Storage is per GPU, in columns (stdlib ``array``, no import cost): timestamp and power of every sample
(16 B), and the slow readings (temperature, clock, utilisation, memory, throttle reasons, processes)
only for the samples that have them, each with its sample's index (56 B; the sampler takes them every
5th tick, so ~27 B per sample per GPU in all, against ~220 B for one ``TraceSample`` object).
``TraceSample`` objects are made only when asked for (``samples``, ``for_gpu``, ``between``); the
derive path reads the columns (``count_between``, ``powers_between``, ``nearest_power_w``,
``integrate_j``, ``readings_between``, ``thinned_power``).

Order: the sampler appends each GPU's samples in time order. An append older than the GPU's last
sample marks it unsorted, and the first read after that sorts it once (stable: equal timestamps keep
their append order). Queries bisect the timestamps, so a window costs O(log n + its samples) and
deriving a run is linear in the trace's length.

An absent optional reading is stored as NaN (float fields) or -2**63 (int fields): a NaN reading
reads back as None, and an int reading must lie in (-2**63, 2**63).
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from operator import add, mul, sub
from typing import Literal, overload


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

_NO_INT = -(2**63)  # an absent int reading
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
        return _NO_INT
    out = int(value)
    if not _NO_INT < out <= _INT_MAX:
        raise ValueError(
            f"Trace reading {name}={value} does not fit a signed 64-bit integer (the trace and its Parquet "
            "column store int64); pass None when the value is unknown."
        )
    return out


class _GpuColumns:
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
        if all(map(math.isnan, floats)) and all(v == _NO_INT for v in ints):
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
        return None if value == _NO_INT else value

    def same_as(self, other: _GpuColumns) -> bool:
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


#: How an absent int reading is stored in ``GpuColumns.ints``.
NO_INT = _NO_INT


class PowerTrace:
    """All samples of a run, per GPU in time order (see the module docstring for the storage).

    ``PowerTrace(interval_s, samples)`` takes ``TraceSample``s in any order; ``append`` / ``extend``
    add more, ``add`` adds one without making a ``TraceSample`` (the sampler's path).
    """

    def __init__(self, interval_s: float, samples: Iterable[TraceSample] = ()) -> None:
        self.interval_s = interval_s
        self._gpus: dict[int, _GpuColumns] = {}
        self.extend(samples)

    # -- adding ---------------------------------------------------------------------------------------

    def add(self, timestamp_s: float, gpu: int, power_w: float, slow: SlowValues | None = None) -> None:
        """Add one sample; ``slow``: its optional readings in ``SLOW_FIELDS`` order, or None."""
        columns = self._gpus.get(gpu)
        if columns is None:
            columns = self._gpus[int(gpu)] = _GpuColumns()
        columns.append(timestamp_s, power_w, slow)

    def append(self, sample: TraceSample) -> None:
        """Add one sample (any time order)."""
        self.add(sample.timestamp_s, sample.gpu, sample.power_w, slow_values(sample))

    def extend(self, samples: Iterable[TraceSample]) -> None:
        """Add samples (any time order)."""
        for sample in samples:
            self.append(sample)

    # -- reading: cheap, no TraceSample objects -----------------------------------------------------

    def gpus(self) -> list[int]:
        """CUDA indices present in the trace, sorted."""
        return sorted(g for g, c in self._gpus.items() if c.time_s)

    def __len__(self) -> int:
        return sum(len(c.time_s) for c in self._gpus.values())

    def count(self, gpu: int) -> int:
        """Samples of one GPU."""
        columns = self._gpus.get(gpu)
        return 0 if columns is None else len(columns.time_s)

    def first_time_s(self) -> float | None:
        """The earliest timestamp of any GPU; None for an empty trace."""
        firsts = [c.time_s[0] for c in map(self._columns, self.gpus()) if c is not None]
        return min(firsts, default=None)

    def count_between(self, gpu: int, start_s: float, end_s: float) -> int:
        """How many samples of one GPU have ``start_s <= t <= end_s``."""
        columns = self._columns(gpu)
        if columns is None:
            return 0
        lo, hi = columns.index_range(start_s, end_s)
        return hi - lo

    def times_s(self, gpu: int) -> array[float]:
        """A copy of one GPU's timestamps, in time order."""
        columns = self._columns(gpu)
        return array("d") if columns is None else array("d", columns.time_s)

    def powers_w(self, gpu: int) -> array[float]:
        """A copy of one GPU's power readings, in time order."""
        columns = self._columns(gpu)
        return array("d") if columns is None else array("d", columns.power_w)

    def powers_between(
        self, gpu: int, start_s: float, end_s: float, include_end: bool = True
    ) -> array[float]:
        """Power of one GPU's samples with ``start_s <= t <= end_s`` (``< end_s`` unless include_end)."""
        columns = self._columns(gpu)
        if columns is None:
            return array("d")
        lo, hi = columns.index_range(start_s, end_s, include_end)
        return columns.power_w[lo:hi]

    def nearest_power_w(self, gpu: int, at_s: float) -> float | None:
        """Power of the sample nearest ``at_s`` (the earlier one on a tie); None without samples."""
        columns = self._columns(gpu)
        if columns is None or not columns.time_s:
            return None
        times = columns.time_s
        i = bisect.bisect_left(times, at_s)
        if i == len(times) or (i > 0 and not times[i] - at_s < at_s - times[i - 1]):
            i = bisect.bisect_left(times, times[i - 1])  # the first of equal timestamps, as min() picks
        return columns.power_w[i]

    @overload
    def readings_between(self, gpu: int, start_s: float, end_s: float, name: FloatField) -> list[float]: ...
    @overload
    def readings_between(self, gpu: int, start_s: float, end_s: float, name: IntField) -> list[int]: ...
    def readings_between(
        self, gpu: int, start_s: float, end_s: float, name: FloatField | IntField
    ) -> list[float] | list[int]:
        """Known values of one optional reading in ``[start_s, end_s]``, in time order (absent: left out)."""
        columns = self._columns(gpu)
        if columns is None:
            return []
        j0, j1 = columns.slow_range(*columns.index_range(start_s, end_s))
        if name in columns.floats:
            return [v for v in columns.floats[name][j0:j1] if not math.isnan(v)]
        return [v for v in columns.ints[name][j0:j1] if v != _NO_INT]

    def integrate_j(self, gpu: int, start_s: float, end_s: float) -> float | None:
        """Trapezoid integral of power over [start_s, end_s], None with fewer than 2 samples.

        Power before the first / after the last in-window sample is held constant to the edges.
        """
        columns = self._columns(gpu)
        if columns is None:
            return None
        lo, hi = columns.index_range(start_s, end_s)
        if hi - lo < 2:
            return None
        times, powers = columns.time_s[lo:hi], columns.power_w[lo:hi]
        dt = map(sub, chain(times, (end_s,)), chain((start_s,), times))
        sums = map(add, chain((powers[0],), powers), chain(powers, (powers[-1],)))
        twice: float = sum(map(mul, dt, sums))
        return twice / 2  # = the sum of (t1 - t0) * (p0 + p1) / 2, exactly (halving is exact)

    def thinned_power(self, gpu: int, max_points: int) -> list[tuple[float, float]]:
        """``thin_power`` of one GPU's samples, from the columns."""
        columns = self._columns(gpu)
        if columns is None:
            return _thin(array("d"), array("d"), max_points)
        return _thin(columns.time_s, columns.power_w, max_points)

    def columns(self, gpu: int) -> GpuColumns:
        """A copy of one GPU's columns, in time order."""
        c = self._columns(gpu) or _GpuColumns()
        return GpuColumns(
            time_s=array("d", c.time_s),
            power_w=array("d", c.power_w),
            slow_at=array("q", c.slow_at),
            floats={n: array("d", v) for n, v in c.floats.items()},
            ints={n: array("q", v) for n, v in c.ints.items()},
        )

    # -- reading as TraceSample objects (made on demand) -------------------------------------------------

    @property
    def samples(self) -> SampleView:
        """Every sample as ``TraceSample``: GPU by GPU (ascending index), each in time order; read only."""
        return SampleView(self)

    def for_gpu(self, gpu: int) -> list[TraceSample]:
        """Samples of one GPU in time order."""
        columns = self._columns(gpu)
        return [] if columns is None else list(columns.materialise(gpu, 0, len(columns.time_s)))

    def between(self, gpu: int, start_s: float, end_s: float) -> list[TraceSample]:
        """Samples of one GPU with ``start_s <= t <= end_s``."""
        columns = self._columns(gpu)
        if columns is None:
            return []
        return list(columns.materialise(gpu, *columns.index_range(start_s, end_s)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PowerTrace):
            return NotImplemented
        gpus = self.gpus()
        if self.interval_s != other.interval_s or gpus != other.gpus():
            return False
        return all(self._need(g).same_as(other._need(g)) for g in gpus)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        counts = ", ".join(f"GPU {g}: {self.count(g)}" for g in self.gpus())
        return f"PowerTrace(interval_s={self.interval_s!r}, samples=<{counts or 'none'}>)"

    def _columns(self, gpu: int) -> _GpuColumns | None:
        columns = self._gpus.get(gpu)
        if columns is not None and not columns.ordered:
            columns.sort()
        return columns

    def _need(self, gpu: int) -> _GpuColumns:
        columns = self._columns(gpu)
        assert columns is not None  # only called for GPUs in gpus()
        return columns


class SampleView(Sequence[TraceSample]):
    """``PowerTrace.samples``: a read-only, list-like view; each sample is made when it is read."""

    def __init__(self, trace: PowerTrace) -> None:
        self._trace = trace

    def __len__(self) -> int:
        return len(self._trace)

    def __iter__(self) -> Iterator[TraceSample]:
        for gpu in self._trace.gpus():
            columns = self._trace._need(gpu)
            yield from columns.materialise(gpu, 0, len(columns.time_s))

    @overload
    def __getitem__(self, index: int) -> TraceSample: ...
    @overload
    def __getitem__(self, index: slice) -> list[TraceSample]: ...
    def __getitem__(self, index: int | slice) -> TraceSample | list[TraceSample]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        i = range(len(self))[index]  # IndexError as for a list
        for gpu in self._trace.gpus():
            columns = self._trace._need(gpu)
            if i < len(columns.time_s):
                return next(columns.materialise(gpu, i, i + 1))
            i -= len(columns.time_s)
        raise IndexError(index)  # pragma: no cover - range() above already checked

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"SampleView({self._trace!r})"


def _thin(times: Sequence[float], powers: Sequence[float], max_points: int) -> list[tuple[float, float]]:
    if max_points < 1:
        raise ValueError("max_points must be >= 1")
    n = len(times)
    if n <= max_points:
        return list(zip(times, powers, strict=True))
    size = -(-n // max_points)
    return [(times[i], sum(powers[i : i + size]) / len(powers[i : i + size])) for i in range(0, n, size)]


def thin_power(samples: Sequence[TraceSample], max_points: int) -> list[tuple[float, float]]:
    """(timestamp_s, power_w) of one GPU's samples, at most ``max_points`` of them.

    Up to ``max_points`` samples: each as it is. More: consecutive buckets of ceil(n / max_points)
    samples, each as (its first sample's timestamp, the mean power of the bucket), so the chart keeps
    the shape while a 1-hour trace stays cheap to log. The full trace is always in the Parquet file.
    ``PowerTrace.thinned_power`` does the same from the columns.
    """
    return _thin([s.timestamp_s for s in samples], [s.power_w for s in samples], max_points)
