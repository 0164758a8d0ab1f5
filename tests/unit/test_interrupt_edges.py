"""A signal at any point of a block's entry or exit (``interrupts``) leaves no handler, count or flag
behind and is never lost: it acts exactly as one that came just beside the block.

CPython runs a Python signal handler in the main thread between bytecodes (at a function's start,
after a call, on a backward jump). Here a tracer stands in for the signal at every ``call`` and
``line`` event of the code a block's ``__enter__`` and ``__exit__`` run (and of what they call): it
calls the installed handler with that frame, so what the handler raises is raised right there, as a
real signal's would be. Each point is its own test id: block, context (``api``: no ``graceful()``;
``app``: the same, with an embedding app's SIGTERM handler that raises ``SystemExit``; ``first`` and
``repeated``: under ``graceful()``, before/after a first signal), signal, entry/exit, point index.

The rule each point must meet: a signal in a block's entry acts as one just before the ``with`` or
on the block's first line; in its exit, as one on its last line or just after the ``with`` (the
same exception, ``Held.signal``, exit line and messages). Unless the process exits (``os._exit``
is replaced by a recorder), the handlers and every count are back to what they were before, and a
fresh signal is handled at once. The guarantee covers this module's handlers: a handler of the API's
or an app's may raise anywhere, so it is checked only where a block replaces it (``keeping()``,
``cutting()``, ``exit_line()`` under ``graceful()`` only; the app's SIGTERM with ``graceful()`` and
``deferred()``, which replace it and put it back, as their last step).
"""

from __future__ import annotations

import functools
import io
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

import pytest

from llem_mlflow import interrupts

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}
BLOCKS: dict[str, Callable[[], AbstractContextManager[Any]]] = {
    "keeping": interrupts.keeping,
    "holding": interrupts.holding,
    "cutting": interrupts.cutting,
    "exit_line": lambda: interrupts.exit_line("log it later with: llem-mlflow log out/x"),
    "deferred": interrupts.deferred,
    "graceful": interrupts.graceful,
}
CONTEXTS = {
    "keeping": ("first", "repeated"),
    "holding": ("api", "first", "repeated"),
    "cutting": ("first", "repeated"),
    "exit_line": ("first", "repeated"),
    "deferred": ("api", "app", "first", "repeated"),
    "graceful": ("api", "app"),  # the outermost block
}
SIDES = {"entry": ("before", "start"), "exit": ("end", "after")}


class _Exited(BaseException):
    """``os._exit`` was called: the process would be gone."""


@dataclass(frozen=True)
class Outcome:
    """What a scenario showed: the exception that left it, what ``holding()`` held, the line the process
    exited with (messages up to then), the signals the embedding's own SIGTERM handler got."""

    raised: str | None
    held: str | None
    exit: str | None
    said: str
    outer: tuple[int, ...]


@dataclass
class _Record:
    app: bool  # the embedding app's SIGTERM handler raises SystemExit
    err: io.StringIO = field(default_factory=io.StringIO)
    exit: str | None = None
    said_at_exit: str = ""
    outer: list[int] = field(default_factory=list)

    def os_exit(self, code: int) -> None:
        if self.exit is None:  # the first one ends the process: nothing after it counts
            self.said_at_exit = self.err.getvalue()
            lines = [x for x in self.said_at_exit.splitlines() if x]
            self.exit = f"{code}: {lines[-1] if lines else ''}"
        raise _Exited

    def term(self, signum: int, frame: FrameType | None) -> None:  # an embedding app's SIGTERM handler
        self.outer.append(signum)
        if self.app:
            raise SystemExit(143)


def _reset(edge: bool = True) -> None:
    """The module's state as a fresh process has it (``_edge``: the entry/exit guard, where it exists)."""
    fresh = dict(depth=0, exit_pending=False, holding=0, held=None, cut=False, way_back=None, final=None)
    for name, value in fresh.items():
        setattr(interrupts._State, name, value)
    interrupts._Deferring.depth = 0
    interrupts._Deferring.held.clear()
    guard = getattr(interrupts, "_edge", None)
    if edge and guard is not None:
        guard.busy = False
        guard.noted.clear()


def _state() -> dict[str, object]:
    s, d = interrupts._State, interrupts._Deferring
    counts = dict(depth=s.depth, exit_pending=s.exit_pending, holding=s.holding, held=s.held, cut=s.cut)
    handlers = {name: signal.getsignal(sig) for name, sig in SIGNALS.items()}
    return {**counts, "way_back": s.way_back, "deferring": (d.depth, list(d.held)), **handlers}


@contextmanager
def _sandbox(app: bool) -> Iterator[_Record]:
    """Fresh state, the API's handlers (SIGTERM: a recorder standing in for the process ending, or an
    app's that raises), ``os._exit`` recorded, stderr captured; pytest's own put back after."""
    record = _Record(app)
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS.values()}
    stderr, os_exit = sys.stderr, os._exit
    sys.stderr, os._exit = record.err, record.os_exit  # type: ignore[assignment]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, record.term)
    _reset()
    try:
        yield record
    finally:
        sys.stderr, os._exit = stderr, os_exit
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        _reset()


def _signal_now(sig: int, frame: FrameType | None) -> None:
    """What CPython does when ``sig`` arrives with ``frame`` running: call its Python handler."""
    handler = signal.getsignal(sig)
    assert callable(handler), f"{sig}: {handler!r} (the sandbox installs Python handlers only)"
    handler(sig, frame)


@dataclass
class _Shot:
    sig: int
    where: str  # before/start/end/after (the scenario's own lines), or entry/exit (a traced point)
    at: int = 0  # the point's index in that phase
    fired: bool = False


class _Injector:
    """Fires each shot at its point; records the points of the block's entry and exit (phase, where)."""

    def __init__(self, shots: list[_Shot]) -> None:
        self.shots = shots
        self.codes: set[CodeType] = set()  # the block's __enter__ and __exit__
        self.body = False  # the block's body has begun: points from here on are its exit's
        self.points: list[tuple[str, str]] = []

    def mark(self, where: str) -> None:
        for shot in self.shots:
            if shot.where == where and not shot.fired:
                shot.fired = True
                _signal_now(shot.sig, sys._getframe(1))

    def trace(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "call" and self._edge(frame):
            self._point(frame, event)
            return self._line
        return None

    def _line(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "line":
            self._point(frame, event)
        return self._line

    def _edge(self, frame: FrameType | None) -> bool:
        while frame is not None:
            if frame.f_code in self.codes:
                return True
            frame = frame.f_back
        return False

    def _point(self, frame: FrameType, event: str) -> None:
        phase = "exit" if self.body else "entry"
        index = sum(1 for p, _ in self.points if p == phase)
        self.points.append((phase, f"{frame.f_code.co_name}:{frame.f_lineno}:{event}"))
        for shot in self.shots:
            if shot.where == phase and shot.at == index and not shot.fired:
                shot.fired = True
                _signal_now(shot.sig, frame)


@contextmanager
def _context(context: str) -> Iterator[None]:
    if context in ("api", "app"):
        yield
        return
    with interrupts.graceful():
        if context == "repeated":
            with pytest.raises(KeyboardInterrupt):
                _signal_now(signal.SIGINT, sys._getframe())
        yield


def _clear_handled_exception() -> None:
    """Clear the thread's handled exception (called from a plain frame: the thread's own stack item).

    A trace function that raises inside a stdlib ``except`` clause (enum's value lookup in
    ``signal.signal``) can leave CPython's handled-exception state set after every frame has unwound;
    ``sys.exc_info()`` then names that ``KeyError`` and every later exception takes it as its
    ``__context__`` (seen in tests/unit/test_oom.py). A signal the interpreter delivers itself does not
    go through a trace function, so this is the harness's to clean up.
    """
    if sys.exc_info()[0] is None:
        return
    import ctypes

    for _ in range(3):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(None))  # PyErr_SetExcInfo steals 3 references
    set_exc_info = ctypes.pythonapi.PyErr_SetExcInfo
    set_exc_info.argtypes = [ctypes.py_object] * 3
    set_exc_info(None, None, None)


def _run(block: str, context: str, inject: _Injector) -> tuple[str | None, str | None]:
    """The block (its entry and exit traced) inside ``context``; (exception that left, Held.signal)."""
    given: list[object] = []
    try:
        with _context(context):
            inject.mark("before")
            cm = BLOCKS[block]()
            inject.codes = {type(cm).__enter__.__code__, type(cm).__exit__.__code__}
            previous = sys.gettrace()
            sys.settrace(inject.trace)
            try:
                with cm as value:
                    inject.body = True
                    given.append(value)
                    inject.mark("start")
                    inject.mark("end")
            finally:
                sys.settrace(previous)
            inject.mark("after")
    except (KeyboardInterrupt, SystemExit) as exc:
        left: str | None = repr(exc)
    else:
        left = None
    _clear_handled_exception()
    return left, _held(given)


def _held(given: list[object]) -> str | None:
    return given[0].signal if given and isinstance(given[0], interrupts.Held) else None


def _handled_at_once() -> bool:
    """A fresh signal for this module's first handler, outside any block, raises at once: nothing the
    block left behind swallows it (installed as ``graceful()`` would, but without entering a block)."""
    before = signal.signal(signal.SIGINT, interrupts._first)
    try:
        _signal_now(signal.SIGINT, sys._getframe())
    except KeyboardInterrupt:
        return True
    finally:
        signal.signal(signal.SIGINT, before)
    return False


@dataclass
class Scenario:
    outcome: Outcome
    state: dict[str, object]  # after it (empty when the process exited)
    at_once: bool  # afterwards a fresh signal was handled at once
    points: list[tuple[str, str]]
    fired: bool


def scenario(block: str, context: str, shots: list[_Shot]) -> Scenario:
    inject = _Injector(shots)
    with _sandbox(context == "app") as record:
        baseline = _state()
        try:
            raised, held = _run(block, context, inject)
        except _Exited:
            raised, held = None, None
        if record.exit is not None:
            outcome = Outcome(None, None, record.exit, record.said_at_exit, tuple(record.outer))
            return Scenario(outcome, {}, True, inject.points, all(s.fired for s in shots))
        outcome = Outcome(raised, held, None, record.err.getvalue(), tuple(record.outer))
        state = {k: ("as before" if k in SIGNALS and v is baseline[k] else v) for k, v in _state().items()}
        _reset(edge=False)  # the counts are checked above; what else it left must not swallow a signal
        at_once = _handled_at_once()
    return Scenario(outcome, state, at_once, inject.points, all(s.fired for s in shots))


BASELINE: dict[str, object] = {
    **dict(depth=0, exit_pending=False, holding=0, held=None, cut=False, way_back=None),
    "deferring": (0, []),
    "SIGINT": "as before",
    "SIGTERM": "as before",
}


@functools.cache
def reference(block: str, context: str, sig: int, where: str) -> Outcome:
    """The outcome of ``sig`` just before/on the first line/on the last line/just after the block."""
    run = scenario(block, context, [_Shot(sig, where)])
    assert run.fired and (run.outcome.exit or run.state == BASELINE), run
    return run.outcome


def _points(block: str, context: str) -> dict[str, int]:
    run = scenario(block, context, [])  # no signal: the points the entry and the exit pass
    return {phase: sum(1 for p, _ in run.points if p == phase) for phase in SIDES}


CASES = [
    pytest.param(block, context, sig, phase, at, id=f"{block}-{context}-{name}-{phase}{at:02d}")
    for block, contexts in CONTEXTS.items()
    for context in contexts
    for phase, count in _points(block, context).items()
    for at in range(count)
    for name, sig in SIGNALS.items()
    if context != "app" or name == "SIGTERM"  # the app's SIGINT is the API's
]


@pytest.mark.parametrize(("block", "context", "sig", "phase", "at"), CASES)
def test_a_signal_at_any_point_of_an_entry_or_exit_acts_as_one_just_beside_the_block(
    block: str, context: str, sig: int, phase: str, at: int
) -> None:
    run = scenario(block, context, [_Shot(sig, phase, at)])
    assert run.fired, run.points
    where = [point for p, point in run.points if p == phase][at]
    beside = {side: reference(block, context, sig, side) for side in SIDES[phase]}
    assert run.outcome in beside.values(), f"at {where}: {run.outcome}\nexpected one of {beside}"
    assert run.state == ({} if run.outcome.exit else BASELINE), f"at {where}: left {run.state}"
    assert run.at_once, f"at {where}: a later signal was not handled at once"


def test_every_block_has_points_in_both_its_entry_and_its_exit() -> None:
    for block, contexts in CONTEXTS.items():
        for context in contexts:
            counts = _points(block, context)
            assert counts["entry"] >= 2 and counts["exit"] >= 2, (block, context, counts)


@pytest.mark.parametrize("phase", ["entry", "exit"])
def test_holding_holds_a_signal_at_the_first_instant_of_its_entry_or_exit(phase: str) -> None:
    """The one choice at the boundary: a signal that reaches the handlers before holding() stops
    holding is held (``Held.signal``), not raised after the block (the runner reports it then)."""
    run = scenario("holding", "first", [_Shot(signal.SIGTERM, phase, 0)])
    assert run.outcome.held == "SIGTERM" and run.outcome.raised is None, run
    assert "SIGTERM: stopping once what was measured is written" in run.outcome.said


def test_two_signals_in_one_entry_are_delivered_in_order_once_it_is_whole() -> None:
    shots = [_Shot(signal.SIGTERM, "entry", 0), _Shot(signal.SIGINT, "entry", 3)]
    run = scenario("holding", "first", shots)
    assert run.fired
    both = scenario("holding", "first", [_Shot(signal.SIGTERM, "start"), _Shot(signal.SIGINT, "start")])
    assert run.outcome == both.outcome
    assert run.outcome.exit is not None and "exiting now (interrupted twice)" in run.outcome.exit
    assert run.outcome.said.index("SIGTERM: stopping") < run.outcome.said.index("interrupted again")
