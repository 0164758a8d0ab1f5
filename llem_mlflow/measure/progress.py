"""What the runner tells its caller while it works: stages and per-batch steps.

The runner depends on the narrow ``Progress`` protocol only; the CLI implements it with a
progress bar on stderr, and ``LogProgress`` (the default for the Python API) writes stages to
the ``llem_mlflow`` logger. ``batch`` is called between ``generate()`` calls, also inside the
measured window, so implementations must return at once (no I/O that blocks). ``counted`` spells
the counts in stage messages (``1 batch``, ``3 prompts``).
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("llem_mlflow")


class Progress(Protocol):
    """Receives the runner's stage messages and batch counts."""

    def stage(self, message: str) -> None:
        """A new stage began (``"loading gpt2"``, ``"idle baseline 3 s"``...)."""
        ...

    def batch(self, phase: str, done: int, total: int) -> None:
        """``done`` of ``total`` batches of ``phase`` (``"warm-up"`` or ``"measure"``) are finished."""
        ...


class LogProgress:
    """Stages to the logger at INFO; batch counts are dropped."""

    def stage(self, message: str) -> None:
        """Log the stage."""
        log.info(message)

    def batch(self, phase: str, done: int, total: int) -> None:
        """Nothing: a log line per batch would be noise."""


def counted(n: int, noun: str) -> str:
    """``1 batch``, ``2 batches``, ``1 prompt``, ``3 prompts``: a count for a stage message."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}es" if noun.endswith(("ch", "sh", "s", "x")) else f"{n} {noun}s"
