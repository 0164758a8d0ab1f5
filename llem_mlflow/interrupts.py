"""Ctrl-C and SIGTERM: the first one stops the run cleanly, a second one exits at once.

``graceful()`` (the CLI wraps every command in it) turns SIGTERM into the same ``KeyboardInterrupt``
that Ctrl-C raises, so one code path (``measure`` -> ``Interrupted``, ``runner``) keeps what was
measured: the sampler stops, the partial result and trace are written, the MLflow run ends KILLED.
From the first signal on, a second SIGINT or SIGTERM ends the process immediately (exit 130) with
one line: the user asked twice. Only while what was measured is being kept (``keeping()``: the
counters read at the cut, the result files written) does the second one wait for that to finish, a
few milliseconds to a few seconds, then exit (MLflow logging is not waited for); a third exits at
once. Signal handlers can only be set in the main thread; elsewhere (a worker thread embedding the
API) ``graceful()`` changes nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

EXIT_CODE = 130  # 128 + SIGINT, what shells report for Ctrl-C
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Keeping:
    """How many ``keeping()`` blocks are open, and whether a repeated signal waits for them."""

    depth = 0
    exit_pending = False


def _say(line: str) -> None:
    sys.stderr.write(f"\n[llem] {line}\n")
    sys.stderr.flush()


def _exit_now(line: str) -> None:
    _say(line)
    os._exit(EXIT_CODE)


def _at_once(signum: int, frame: FrameType | None) -> None:
    if _Keeping.depth and not _Keeping.exit_pending:
        _Keeping.exit_pending = True
        _say("interrupted again: exiting once what was measured is written (once more: exit now)")
        return
    _exit_now("interrupted again: exiting now; files being written may be incomplete")


@contextmanager
def keeping() -> Iterator[None]:
    """Within: a repeated signal (after the first stopped the run) waits for the block to end, then exits.

    The block is where an interrupted run keeps what it measured; blocks nest (the outermost decides).
    Without ``graceful()``'s handlers (a worker thread, an embedding caller) it changes nothing.
    """
    _Keeping.depth += 1
    try:
        yield
    finally:
        _Keeping.depth -= 1
        if not _Keeping.depth and _Keeping.exit_pending:
            _Keeping.exit_pending = False
            _exit_now(
                "exiting now (interrupted twice): MLflow logging skipped; `llem-mlflow log <result folder>` "
                "logs what was written"
            )


def _first(signum: int, frame: FrameType | None) -> None:
    for sig in _SIGNALS:
        signal.signal(sig, _at_once)
    raise KeyboardInterrupt(signal.Signals(signum).name)


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
