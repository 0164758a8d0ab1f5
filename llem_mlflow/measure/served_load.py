"""What the server scenario's stages kept beside the cycles: every request, and the counter reads taken
inside each cycle's window (for the steady-state window and per-request energy, ``figures.serving``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llem_mlflow.measure.counters import CounterMark
from llem_mlflow.served import RequestRecord


@dataclass(frozen=True)
class ServedCycle:
    """One cycle's load: its requests (send order) and the counter reads at its edges and polled between
    (``polls[0]``: the window's start read, ``polls[-1]``: its end read; empty without GPUs)."""

    index: int
    records: list[RequestRecord]
    polls: list[CounterMark] = field(default_factory=list)
    delayed: int = 0  # open loop: sends the client could not make on time


@dataclass(frozen=True)
class ServedLoad:
    """The whole load of a server-scenario run: warm-up requests, then each cycle's."""

    target_concurrency: int | None
    cycles: list[ServedCycle]
    warmup: list[RequestRecord] = field(default_factory=list)
    poll_s: float = 0.1
    gpu_processes: list[str] = field(default_factory=list)  # "GPU 0: pid 1234 (python3)", after warm-up

    @property
    def records(self) -> list[RequestRecord]:
        """Every measured request of every cycle."""
        return [r for c in self.cycles for r in c.records]
