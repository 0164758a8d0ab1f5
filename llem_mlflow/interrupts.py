"""Ctrl-C and SIGTERM: the first one stops the run cleanly, a second one exits at once.

``graceful()`` (the CLI wraps every command in it) turns SIGTERM into the same ``KeyboardInterrupt``
that Ctrl-C raises, so one code path (``measure`` -> ``Interrupted``, ``runner``) keeps what was
measured: the sampler stops, the partial result and trace are written, the MLflow run ends KILLED.
From the first signal on, a second SIGINT or SIGTERM ends the process immediately (exit 130) with
one line: the user asked twice. Signal handlers can only be set in the main thread; elsewhere (a
worker thread embedding the API) ``graceful()`` changes nothing.
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


def _at_once(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("\n[llem] interrupted again: exiting now; files being written may be incomplete\n")
    sys.stderr.flush()
    os._exit(EXIT_CODE)


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
