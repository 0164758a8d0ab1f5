"""PowerTrace: the sampled time series (absolute timestamps, per GPU) and pure helpers on it.

The trace gives shape, phases and a cross-check; energy itself comes from the counter.

Storage is per GPU, in columns (``trace_columns.ColumnStore``): ~27 B per sample per GPU in all,
against ~220 B for one ``TraceSample`` object.
``TraceSample`` objects are made only when asked for (``samples``, ``for_gpu``, ``between``); the
derive path reads the columns (``count_between``, ``powers_between``, ``nearest_power_w``,
``integrate_j``, ``readings_between``, ``thinned_power``).

Order: the sampler appends each GPU's samples in time order. An append older than the GPU's last
sample marks it unsorted, and the first read after that sorts it once (stable: equal timestamps keep
their append order). Queries bisect the timestamps, so a window costs O(log n + its samples) and
deriving a run is linear in the trace's length.

An absent optional reading reads back as None (see ``trace_columns`` for how it is stored).
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from operator import add, mul, sub
from typing import overload

from llem_mlflow.measure.trace_columns import (
    FLOAT_FIELDS,
    INT_FIELDS,
    NO_INT,
    SLOW_FIELDS,
    ColumnStore,
    FloatField,
    GpuColumns,
    IntField,
    SlowValues,
    TraceSample,
    slow_values,
)

#: Re-exported: the sample record and the column names are read from here by writers and readers.
__all__ = [
    "FLOAT_FIELDS",
    "INT_FIELDS",
    "NO_INT",
    "SLOW_FIELDS",
    "FloatField",
    "GpuColumns",
    "IntField",
    "PowerTrace",
    "SampleView",
    "SlowValues",
    "TraceSample",
    "slow_values",
    "thin_power",
]


class PowerTrace:
    """All samples of a run, per GPU in time order (see the module docstring for the storage).

    ``PowerTrace(interval_s, samples)`` takes ``TraceSample``s in any order; ``append`` / ``extend``
    add more, ``add`` adds one without making a ``TraceSample`` (the sampler's path).
    """

    def __init__(self, interval_s: float, samples: Iterable[TraceSample] = ()) -> None:
        self.interval_s = interval_s
        self._gpus: dict[int, ColumnStore] = {}
        self.extend(samples)

    # -- adding ---------------------------------------------------------------------------------------

    def add(self, timestamp_s: float, gpu: int, power_w: float, slow: SlowValues | None = None) -> None:
        """Add one sample; ``slow``: its optional readings in ``SLOW_FIELDS`` order, or None."""
        columns = self._gpus.get(gpu)
        if columns is None:
            columns = self._gpus[int(gpu)] = ColumnStore()
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
        return [v for v in columns.ints[name][j0:j1] if v != NO_INT]

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
        c = self._columns(gpu) or ColumnStore()
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

    def _columns(self, gpu: int) -> ColumnStore | None:
        columns = self._gpus.get(gpu)
        if columns is not None and not columns.ordered:
            columns.sort()
        return columns

    def _need(self, gpu: int) -> ColumnStore:
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
