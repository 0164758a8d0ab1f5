"""Ctrl-C and SIGTERM: the first one stops the run cleanly, and what was measured is never lost to them.

``graceful()`` (the CLI wraps every command in it) turns SIGTERM into the same ``KeyboardInterrupt``
that Ctrl-C raises, so one code path (``measure`` -> ``Interrupted``, ``runner``) keeps what was
measured: the sampler stops, the partial result and trace are written, the MLflow run ends KILLED.
After measuring, the stage decides what a signal does (``runner`` opens these blocks):

- ``holding()`` (deriving the figures and writing the files): a first signal is held until the block
  ends (``Held.signal`` then names it), so result.json is always written; the run then stops unlogged.
- ``keeping()`` (writing what an interrupted run measured, spooling): a repeated signal waits for the
  block to end, a few milliseconds to a few seconds, then the process exits; once more exits at once.
- ``cutting()`` (MLflow logging): a signal, first or repeated, raises ``KeyboardInterrupt`` once to cut
  a slow store short; the runner then spools the result and ends the run KILLED.

Anywhere else a repeated signal ends the process at once (exit 130, ``os._exit``, after ``on_hard_exit``
hooks) with one line ending with the way back set by ``exit_line()`` (e.g. ``llem-mlflow log DIR``).
Handlers are set in the main thread only (in a worker thread ``graceful()`` and ``holding()`` do nothing).
``deferred()`` holds both signals while a store's schema is created or migrated, then delivers them.

A signal that this module's handlers get while a block is entered or left never finds its state half
changed: it is noted and delivered once the entry or exit is whole, acting as one just before or inside
the block (entering) or just after it (leaving; ``holding()`` still holds one that comes before it stops
holding). So no handler is left installed, no count is left off and no signal is lost (``_Block``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Generic, TypeVar

EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NO_WAY_BACK = "files being written may be incomplete"
_T = TypeVar("_T")


class _State:
    """The open blocks (``keeping()``, ``holding()``), whether a signal waits or cuts, the exit line."""

    depth = 0  # open keeping() blocks (holding() is one too)
    exit_pending = False
    holding = 0  # open holding() blocks: a first signal waits for them
    held: str | None = None  # the signal holding() holds
    cut = False  # inside cutting(): the next signal raises KeyboardInterrupt
    way_back: str | None = None  # exit_line()'s
    final: str | None = None  # last_words()'


@dataclass
class Held:
    """What a ``holding()`` block held: the name of the signal (None: none came)."""

    signal: str | None = None


def _say(line: str) -> None:
    sys.stderr.write(f"\n[llem] {line}\n")
    sys.stderr.flush()


_BEFORE_EXIT: list[Callable[[], object]] = []  # run before a hard exit, e.g. stop a launched server
on_hard_exit = _BEFORE_EXIT.append


def _exit_now(line: str) -> None:
    try:
        _say(line)  # a closed or broken stderr must not keep the process alive
        for stop in _BEFORE_EXIT:
            with contextlib.suppress(BaseException):
                stop()
    finally:
        os._exit(EXIT_CODE)


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _first(signum: int, frame: FrameType | None) -> None:
    if not _at_edge(signum, frame):
        _first_now(signum)


def _first_now(signum: int) -> None:
    if _held(signum):
        return
    for sig in _SIGNALS:
        if signal.getsignal(sig) is _first:
            signal.signal(sig, _at_once)
    if _State.holding:
        _State.held = _State.held or _name(signum)
        _say(f"{_name(signum)}: stopping once what was measured is written (again: exit then; 3 times: now)")
        return
    _State.cut = False
    raise KeyboardInterrupt(_name(signum))


def _at_once(signum: int, frame: FrameType | None) -> None:
    if not _at_edge(signum, frame):
        _at_once_now(signum)


def _at_once_now(signum: int) -> None:
    if _held(signum):
        return
    if _State.depth and not _State.exit_pending:
        _State.exit_pending = True
        _say("interrupted again: exiting once what was measured is written (once more: exit now)")
        return
    if _State.cut and not _State.depth:
        _State.cut = False
        raise KeyboardInterrupt(_name(signum))
    _exit_now(f"interrupted again: exiting now; {_way_back()}")


def _hold(signum: int, frame: FrameType | None) -> None:
    if not _at_edge(signum, frame):
        _held(signum)


class _EdgeState(threading.local):
    """Per thread: whether a block entry or exit runs; the signals noted meanwhile (main thread only)."""

    def __init__(self) -> None:
        self.busy = False
        self.noted: list[int] = []


_edge = _EdgeState()


def _at_edge(signum: int, frame: FrameType | None) -> bool:
    """True, with ``signum`` noted for ``_leave``, when the main thread was entering or leaving a block:
    ``_edge.busy`` is set, or ``frame`` (or a caller) is an entry or exit not past its first statement.
    With none running, a flag left set (an exception cut one short) counts for nothing."""
    edges = []  # (line, first statement's line) of each entry or exit running
    while frame is not None:
        if frame.f_code in _FIRST_LINES:
            edges.append((frame.f_lineno, _FIRST_LINES[frame.f_code]))
        frame = frame.f_back
    if not edges or not (_edge.busy or any(line is not None and line <= first for line, first in edges)):
        return False
    _edge.noted.append(signum)
    return True


def _leave(result: _T) -> _T:
    """End an entry or exit: from here a signal is handled at once; the noted ones are delivered now."""
    _edge.busy, noted, _edge.noted = False, _edge.noted, []
    _deliver(noted)
    return result


def _deliver(noted: list[int]) -> None:
    """Raise each noted signal again, oldest first, for whatever handler is installed now (Python's,
    the default action, ignored); when one raises, the rest are delivered before that propagates."""
    if noted:
        signum = noted.pop(0)
        try:
            signal.raise_signal(signum)
        finally:
            _deliver(noted)


class _Block(Generic[_T]):
    """A with-block whose state (``_open``, ``_close``) a signal never finds half changed: from the first
    instant of an entry or exit to ``_leave``, this module's handlers only note it. A handler not this
    module's may raise in ``_open`` before it replaced it, or once ``_close`` put it back: what was
    replaced is put back again (``_restore``). An entry whose noted signal raises is left again."""

    given: _T  # what ``as`` gets

    def __enter__(self) -> _T:
        try:
            _edge.busy = True
            self._open()
        except BaseException:  # a handler not this module's raised before the block was open
            self._restore()
            _leave(None)
            raise
        try:
            return _leave(self.given)
        except BaseException:  # a signal noted while entering stops the block: leave it again
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc: object) -> None:
        _edge.busy = True
        try:
            self._close()
        except BaseException:  # a handler put back raised (or the process exits): put all back
            self._restore()
            _leave(None)
            raise
        return _leave(None)

    def _open(self) -> None: ...

    def _close(self) -> None: ...

    def _restore(self) -> None: ...  # put back replaced handlers (again, if that was cut midway)


_FIRST_LINES = {  # entry/exit code -> its first statement's line: at or before it, the flag is not set
    c: min(n for _, _, n in c.co_lines() if n and n > c.co_firstlineno)
    for c in (_Block.__enter__.__code__, _Block.__exit__.__code__)
}


def _put_back(handlers: dict[int, Any]) -> None:
    for sig, handler in handlers.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class keeping(_Block[None]):
    """Within: a repeated signal (after the first stopped the run) waits for the block to end, then exits.

    The block is where an interrupted run keeps what it measured; blocks nest (the outermost decides).
    Without ``graceful()``'s handlers (a worker thread, an embedding caller) it changes nothing.
    """

    given = None

    def _open(self) -> None:
        _State.depth += 1

    def _close(self) -> None:
        _end_keeping()


def _end_keeping() -> None:
    _State.depth -= 1
    if not _State.depth and _State.exit_pending:
        _State.exit_pending = False
        _exit_now(f"exiting now (interrupted twice): {_way_back()}")


class holding(_Block[Held]):
    """Within: a first signal is held (not raised) until the block ends; a second exits once it ends.

    The ``Held`` it gives (``as``) names the signal after the block. Under ``graceful()`` the CLI's
    handlers hold it; in the main thread without them (the API), Ctrl-C is held too for the block.
    """

    def __init__(self) -> None:
        self.given = Held()
        self.own = False  # the API's Ctrl-C (default_int_handler): this block holds it itself

    def _open(self) -> None:
        self.own = _main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        if self.own:
            signal.signal(signal.SIGINT, _first)
        _State.holding += 1
        _State.depth += 1  # a keeping() block too

    def _close(self) -> None:
        _hold_noted()
        _State.holding -= 1
        self.given.signal, _State.held = _State.held, (_State.held if _State.holding else None)
        _end_keeping()
        self._restore()  # last: from here Ctrl-C raises at once again

    def _restore(self) -> None:
        if self.own:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _hold_noted() -> None:
    """Handle now the noted signals this module's handlers take: the block still holds them."""
    while _edge.noted and signal.getsignal(_edge.noted[0]) in _NOW:
        signum = _edge.noted.pop(0)
        _NOW[signal.getsignal(signum)](signum)


class cutting(_Block[None]):
    """Within: a signal, first or repeated, raises ``KeyboardInterrupt`` once (cuts a slow wait short)."""

    given = None

    def _open(self) -> None:
        _State.cut = True

    def _close(self) -> None:
        _State.cut = False


class exit_line(_Block[None]):
    """Within: a process that exits at once ends its last line with ``way_back`` (how to recover)."""

    given = None

    def __init__(self, way_back: str) -> None:
        self.way_back = way_back
        self.before: str | None = None

    def _open(self) -> None:
        self.before, _State.way_back = _State.way_back, self.way_back

    def _close(self) -> None:
        _State.way_back = self.before


def last_words(message: str | None) -> None:
    """A process that exits at once from now on (outside ``exit_line()``) says ``message``: what it kept."""
    _State.final = message


def _way_back() -> str:
    return _State.way_back or _State.final or _NO_WAY_BACK


class _Deferring:
    """How many ``deferred()`` blocks are open (any thread), and the signals they hold back."""

    depth = 0
    held: list[int] = []  # one list per process, like the signal handlers
    lock = threading.RLock()  # re-entrant: a handler runs in the main thread, which may hold it


def _held(signum: int) -> bool:
    """While a ``deferred()`` block is open: note ``signum`` to deliver after it, True."""
    with _Deferring.lock:
        if not _Deferring.depth:
            return False
        if len(_Deferring.held) >= 2:
            _exit_now("interrupted 3 times: exiting now (a sqlite store is only ever put in place whole)")
        if not _Deferring.held:
            _say(f"{_name(signum)}: stopping once the MLflow store is made whole (seconds; 3 times: now)")
        _Deferring.held.append(signum)
        return True


class _Replacing(_Block[None]):
    """A block that replaces the main thread's SIGINT and SIGTERM handlers while it is open."""

    given = None

    def __init__(self) -> None:
        self.before: dict[int, Any] = {}  # the handlers before the block (main thread only)

    def _replace(self, handler: Callable[[int, FrameType | None], None]) -> None:
        if not _main_thread():
            return
        self.before = {sig: signal.getsignal(sig) for sig in _SIGNALS}
        for sig in _SIGNALS:  # SIGINT first: the API's default_int_handler may raise only before
            signal.signal(sig, handler)

    def _restore(self) -> None:
        _put_back(self.before)


class deferred(_Replacing):
    """Within: SIGINT and SIGTERM wait; each is delivered again when the last open block ends.

    For work a signal must never cut, such as a store's schema migration. In the main thread the
    block holds the signals itself; in another thread it holds those ``graceful()``'s handlers
    receive (without them, in an embedding caller's worker thread, it changes nothing).
    """

    def _open(self) -> None:
        self._replace(_hold)
        with _Deferring.lock:
            _Deferring.depth += 1

    def _close(self) -> None:
        with _Deferring.lock:
            _Deferring.depth -= 1
            due = [] if _Deferring.depth else list(_Deferring.held)
            if not _Deferring.depth:
                _Deferring.held.clear()
        if self.before:  # the main thread: _leave delivers them, once the handlers are back
            _edge.noted[:0] = due
        else:
            for signum in due:
                os.kill(os.getpid(), signum)
        self._restore()


class graceful(_Replacing):
    """Within: SIGINT/SIGTERM raise KeyboardInterrupt once, then exit at once; handlers restored after."""

    def _open(self) -> None:
        self._replace(_first)

    def _close(self) -> None:
        self._restore()


_NOW: dict[object, Callable[[int], object]] = {_first: _first_now, _at_once: _at_once_now, _hold: _held}
