"""Wall time of each stage of a run: a stopwatch of named laps, and the process's age at a moment.

``Stopwatch.lap(name)`` times a block with ``time.perf_counter``; laps of one name add up (every
cycle and cool-down is one ``measure`` lap). The runner turns the laps into ``result.Timings``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class Stopwatch:
    """Named laps in seconds, and the time since the stopwatch was made (``elapsed_s``)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._start = clock()
        self.laps: dict[str, float] = {}

    @contextmanager
    def lap(self, name: str) -> Iterator[None]:
        """Time the block; its seconds are added to ``laps[name]`` even when it raises."""
        started = self._clock()
        try:
            yield
        finally:
            self.laps[name] = self.laps.get(name, 0.0) + self._clock() - started

    def elapsed_s(self) -> float:
        """Seconds since the stopwatch was made."""
        return self._clock() - self._start

    def get(self, name: str) -> float | None:
        """The lap's seconds, or None when no block of that name ran."""
        return self.laps.get(name)


def process_age_s(proc: Path = Path("/proc")) -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where that cannot be read."""
    try:
        stat = (proc / "self" / "stat").read_text()
        uptime_s = float((proc / "uptime").read_text().split()[0])
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after "pid (comm)"
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(uptime_s - ticks / hz, 0.0)
