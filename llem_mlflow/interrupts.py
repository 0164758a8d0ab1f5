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

Anywhere else a repeated signal ends the process at once (exit 130, ``os._exit``) with one line: the
user asked twice. That line ends with the way back set by ``exit_line()`` (e.g. ``llem-mlflow log DIR``).
Signal handlers can only be set in the main thread; elsewhere (a worker thread embedding the API)
``graceful()`` and ``holding()`` change nothing. ``deferred()`` holds both signals while a store's
schema is created or migrated (a cut migration would break the store for good), then delivers them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NO_WAY_BACK = "files being written may be incomplete"


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


def _exit_now(line: str) -> None:
    _say(line)
    os._exit(EXIT_CODE)


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _at_once(signum: int, frame: FrameType | None) -> None:
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


@contextmanager
def keeping() -> Iterator[None]:
    """Within: a repeated signal (after the first stopped the run) waits for the block to end, then exits.

    The block is where an interrupted run keeps what it measured; blocks nest (the outermost decides).
    Without ``graceful()``'s handlers (a worker thread, an embedding caller) it changes nothing.
    """
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if not _State.depth and _State.exit_pending:
            _State.exit_pending = False
            _exit_now(f"exiting now (interrupted twice): {_way_back()}")


@contextmanager
def holding() -> Iterator[Held]:
    """Within: a first signal is held (not raised) until the block ends; a second exits once it ends.

    The yielded ``Held`` names the signal after the block. Under ``graceful()`` the CLI's handlers hold
    it; in the main thread without them (the API), Ctrl-C is held too for the block.
    """
    held = Held()
    own = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    before = signal.signal(signal.SIGINT, _first) if own else None
    _State.holding += 1
    try:
        with keeping():
            yield held
    finally:
        _State.holding -= 1
        held.signal, _State.held = _State.held, (_State.held if _State.holding else None)
        if own:
            signal.signal(signal.SIGINT, before)


@contextmanager
def cutting() -> Iterator[None]:
    """Within: a signal, first or repeated, raises ``KeyboardInterrupt`` once (cuts a slow wait short)."""
    _State.cut = True
    try:
        yield
    finally:
        _State.cut = False


@contextmanager
def exit_line(way_back: str) -> Iterator[None]:
    """Within: a process that exits at once ends its last line with ``way_back`` (how to recover)."""
    before, _State.way_back = _State.way_back, way_back
    try:
        yield
    finally:
        _State.way_back = before


def last_words(message: str | None) -> None:
    """From now on, a process that exits at once (outside any ``exit_line()``) says ``message``: what a
    stopped run kept, so a signal that lands before the CLI prints it cannot lose it."""
    _State.final = message


def _way_back() -> str:
    return _State.way_back or _State.final or _NO_WAY_BACK


def _first(signum: int, frame: FrameType | None) -> None:
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


def _hold(signum: int, frame: FrameType | None) -> None:
    _held(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """Within: SIGINT and SIGTERM wait; each is delivered again when the last open block ends.

    For work a signal must never cut, such as a store's schema migration. In the main thread the
    block holds the signals itself; in another thread it holds those ``graceful()``'s handlers
    receive (without them, in an embedding caller's worker thread, it changes nothing).
    """
    main = threading.current_thread() is threading.main_thread()
    before: dict[signal.Signals, Any] = {sig: signal.getsignal(sig) for sig in _SIGNALS} if main else {}
    with _Deferring.lock:
        _Deferring.depth += 1
    for sig in before:
        signal.signal(sig, _hold)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        with _Deferring.lock:
            _Deferring.depth -= 1
            due = [] if _Deferring.depth else list(_Deferring.held)
            if not _Deferring.depth:
                _Deferring.held.clear()
        for signum in due:
            os.kill(os.getpid(), signum)


@contextmanager
def graceful() -> Iterator[None]:
    """Within: SIGINT/SIGTERM raise KeyboardInterrupt once, then exit at once; handlers restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before: dict[signal.Signals, Any] = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    for sig in _SIGNALS:
        signal.signal(sig, _first)
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
