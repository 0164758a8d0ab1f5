"""Test helper: every child process this process starts, with the wall-clock time it started.

The promise it checks: **no child process is started inside a measured window**, from warm-up through
idle-after (``measure.measure``'s call), nor inside any window of ``result.windows``. A child started
before (model load) or after (the power figure: matplotlib builds its font cache with ``fc-list`` on
first import; MLflow logging) is allowed: it cannot reach a measured number.

Starts are seen by an audit hook (``sys.addaudithook``: it sees ``subprocess.Popen``, ``os.fork``,
``os.posix_spawn``, ``os.system`` and the ``os.exec*``/``os.spawn*`` families, whoever calls them, and
cannot be removed, so it is installed once and records only while ``recording()`` is open), plus a wrapper
of ``multiprocessing.util.spawnv_passfds`` (the spawn and forkserver start methods call
``_posixsubprocess.fork_exec`` directly, which raises no audit event).
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

#: Audit events that start a child process (or replace this one).
SPAWN_EVENTS = frozenset(
    {
        "subprocess.Popen",
        "os.fork",
        "os.forkpty",
        "os.posix_spawn",
        "os.spawn",
        "os.system",
        "os.exec",
    }
)

Span = tuple[float, float]


@dataclass(frozen=True)
class Spawn:
    """One child-process start: the event, its wall-clock time (``time.time()``) and what started it."""

    event: str
    at_s: float
    what: str

    def __str__(self) -> str:
        return f"{self.event} at {self.at_s:.3f}: {self.what}"


@dataclass
class SpawnLog:
    """The starts seen while ``recording()`` was open, and the measured spans recorded meanwhile."""

    spawns: list[Spawn] = field(default_factory=list)
    measured: list[Span] = field(default_factory=list)  # each measure.measure() call: (start, end)

    def inside(self, spans: Sequence[Span]) -> list[Spawn]:
        """The starts that fall inside any of ``spans`` (edges included)."""
        return [s for s in self.spawns if any(a <= s.at_s <= b for a, b in spans)]


_active: list[SpawnLog] = []
_installed: list[bool] = []


def _describe(args: tuple[Any, ...]) -> str:
    here = traceback.extract_stack(limit=14)[:-3]
    stack = " <- ".join(f"{f.filename}:{f.lineno}" for f in reversed(here))
    return f"{str(args[:2])[:200]} via {stack}"


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _active and event in SPAWN_EVENTS:
        spawn = Spawn(event, time.time(), _describe(args))
        for log in _active:
            log.spawns.append(spawn)


def _record(event: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def recorded(*args: Any, **kwargs: Any) -> Any:
        _hook(event, args)
        return fn(*args, **kwargs)

    return recorded


@contextmanager
def recording(monkeypatch: pytest.MonkeyPatch) -> Iterator[SpawnLog]:
    """Record child-process starts, and each ``measure.measure()`` call's wall-clock span, until exit."""
    import multiprocessing.util

    from llem_mlflow.measure import stages as measure

    if not _installed:
        sys.addaudithook(_hook)
        _installed.append(True)
    log = SpawnLog()
    real_measure = measure.measure

    def timed(*args: Any, **kwargs: Any) -> Any:
        start_s = time.time()
        try:
            return real_measure(*args, **kwargs)
        finally:
            log.measured.append((start_s, time.time()))

    monkeypatch.setattr(measure, "measure", timed)
    spawnv = multiprocessing.util.spawnv_passfds
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", _record("multiprocessing spawn", spawnv))
    _active.append(log)
    try:
        yield log
    finally:
        _active.remove(log)


def spawns_in_measured_windows(log: SpawnLog, windows: Mapping[str, Any]) -> list[str]:
    """Each start inside a ``measure.measure()`` call or a result window (``Window``), one line each.

    [] when none; a log that saw no ``measure()`` call says so (the check would have seen nothing).
    """
    if not log.measured:
        return ["measure.measure() was not called while recording: nothing was checked"]
    spans = {"measure() call": log.measured, **{name: [(w.start_s, w.end_s)] for name, w in windows.items()}}
    return [f"{name}: {s}" for name, inner in spans.items() for s in log.inside(inner)]
