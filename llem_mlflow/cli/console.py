"""The CLI's progress display on stderr: ``[llem]`` stage lines, and a bar per batch phase on a terminal.

``ConsoleProgress`` implements ``llem_mlflow.measure.progress.Progress``. Use it as a context manager around
the run: entering prepares the bars (rich imported, tasks created; nothing drawn yet), the first
``batch`` call starts the display, and leaving stops it even when the run fails. The display starts
only once batches run, so model downloads (their own progress output) happen before it.

``batch`` is called between ``generate()`` calls inside the measured window. Apart from the very
first call of a run (which starts rich's display, so a phase should be announced with
``batch(phase, 0, total)`` before the window opens), it only updates an in-memory task under
rich's lock: it never renders or writes. Rich's own refresh thread (a few times a second) draws
the bars. When stderr is not a terminal (logs, CI, pipes) there are no bars and rich is not
imported: ``stage`` writes one plain line and ``batch`` does nothing.

It also owns how a figure and its 95 % interval are printed (the run summary, ``compare``):
``significant`` keeps a number's significant figures (0.93 stays 0.930, never "1"; 1234.5 is 1,234),
and ``with_interval`` writes ``value [low, high]``, each bound to the same significant figures.

And the rest of what the CLI writes around it: ``line`` (the ``label  value`` rows of the run summary,
``config``, ``log`` and ``sweep``) and ``setup_logging`` (log lines on stderr, above the bars, scrubbed).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

from llem_mlflow.secrets import scrub_secrets

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

#: Batch phases the runner reports; their bars are prepared on entry so ``batch`` never renders.
PHASES: tuple[str, ...] = ("warm-up", "measure")
_REFRESH_PER_SECOND = 4  # redraws per second of rich's background thread (elapsed time shows seconds)


def _stderr_is_terminal() -> bool:
    return _isatty(sys.stderr) and os.environ.get("TERM", "") != "dumb"


class ConsoleProgress:
    """``[llem] message`` lines on stderr, plus per-phase progress bars when stderr is a terminal.

    Args:
        console: the rich console to draw on (tests pass one writing to a buffer); default: a
            console on stderr, created on entry, only when stderr is a terminal.
        bars: force bars on or off; default: on exactly when the console is a terminal.
    """

    def __init__(self, console: Console | None = None, *, bars: bool | None = None) -> None:
        self._console = console
        self._bars = bars
        self._progress: RichProgress | None = None
        self._live = False  # the display has been started (by the first batch call)
        self._tasks: dict[str, TaskID] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ConsoleProgress:
        if self._wants_bars():
            self._prepare_bars()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the display (the bars' final state stays on screen); safe to call twice."""
        progress, self._progress = self._progress, None
        if progress is not None and self._live:
            progress.stop()
        self._live = False

    def _wants_bars(self) -> bool:
        if self._bars is not None:
            return self._bars
        if self._console is not None:
            return self._console.is_terminal and not self._console.is_dumb_terminal
        return _stderr_is_terminal()

    def _prepare_bars(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        console = self._console or Console(stderr=True)
        self._console = console
        progress = RichProgress(
            TextColumn("[llem] {task.description:<8}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("batches", markup=False),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=_REFRESH_PER_SECOND,
            # Log lines go above the bars; stdout too, but only when it shares the terminal: a piped
            # stdout (the summary) stays untouched.
            redirect_stdout=_isatty(sys.stdout),
            redirect_stderr=True,
        )
        for phase in PHASES:  # add_task draws only once the display runs: create them now
            self._tasks[phase] = progress.add_task(phase, total=None, start=False, visible=False)
        self._progress = progress

    # ------------------------------------------------------------------ Progress protocol

    def stage(self, message: str) -> None:
        """Print ``[llem] message`` (above the bars when they are shown)."""
        line = f"[llem] {message}"
        if self._progress is not None and self._console is not None:
            self._console.print(line, markup=False, highlight=False, emoji=False, soft_wrap=True)
        else:
            _write_line(sys.stderr, line)

    def batch(self, phase: str, done: int, total: int) -> None:
        """Move ``phase``'s bar to ``done``/``total``: an in-memory update, no drawing, no I/O."""
        progress = self._progress
        if progress is None:
            return
        if not self._live:  # once per run: draws and starts rich's refresh thread
            self._live = True
            progress.start()
        task = self._tasks.get(phase)
        if task is None:  # an unexpected phase: add_task draws at once, so only here, once per phase
            task = self._tasks[phase] = progress.add_task(phase, total=None, start=False, visible=False)
        progress.start_task(task)  # starts the elapsed-time clock on the phase's first call only
        progress.update(task, completed=done, total=total, visible=True)


def _isatty(stream: TextIO | None) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _write_line(stream: TextIO, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()


#: Most decimals ``significant`` writes in fixed notation; smaller values are written as 1.23e-13.
_MAX_DECIMALS = 12


def significant(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant figures in fixed notation and thousands separators.

    Integral digits are never rounded away: 1234.5 -> ``1,234`` (or ``1,235``); 0.93 -> ``0.930``.
    """
    if not math.isfinite(value):
        return str(value)
    size = abs(value)
    exponent = math.floor(math.log10(size)) if size > 0 else 0
    decimals = max(digits - 1 - exponent, 0)
    if decimals > _MAX_DECIMALS:
        return f"{value:.{digits - 1}e}"
    return f"{value:,.{decimals}f}"


def with_interval(value: float, low: float | None, high: float | None, digits: int = 3) -> str:
    """``value [low, high]`` to ``digits`` significant figures each; the value alone without bounds."""
    text = significant(value, digits)
    if low is None or high is None:
        return text
    return f"{text} [{significant(low, digits)}, {significant(high, digits)}]"


#: Width of the label column of ``line`` (the run summary, ``config``, ``log``, ``sweep``).
LABEL = 16


def line(label: str, value: str) -> str:
    """``label`` padded to the label column, then ``value``."""
    return f"{label:<{LABEL}}{value}"


class _CurrentStderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is now, so log lines go above the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(scrub_secrets(self.format(record)) + "\n")  # MLflow's lines may name the URI
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def setup_logging() -> None:
    """Warnings and errors of every logger as ``[llem] LEVEL: message`` lines on the current stderr."""
    logging.basicConfig(
        level=logging.WARNING, format="[llem] %(levelname)s: %(message)s", handlers=[_CurrentStderr()]
    )
