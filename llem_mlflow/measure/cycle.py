"""One measured cycle: its batches between two counter reads, and what an interrupt leaves of it.

Owns ``Cycle`` (a cycle's batches and counter window), ``Cut`` (how Ctrl-C or SIGTERM cut it short),
``Ramp`` (the leading batches a steady-state cycle leaves out) and ``measure_cycle``: the cool-down, then
the batches in the edge order of ``counters.measure_window``, RAPL read at the window's inner edges, and
with ``steady_state`` the counters read at every batch edge too (each read timed by ``READ_TIMER``).
An interrupt inside the window abandons the running batch, syncs, reads the counters and raises
``CutShort`` holding the cycle of the completed batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure import counters, rapl, workload
from llem_mlflow.measure.counters import CounterMark, CounterWindow
from llem_mlflow.measure.progress import Progress, counted
from llem_mlflow.protocols import Backend, BatchStats, GpuDevice

#: Times each in-window counter mark (steady state); a test puts a fake clock here.
READ_TIMER: Callable[[], float] = time.perf_counter


@dataclass(frozen=True)
class Cut:
    """How an interrupt cut a cycle short: ``completed`` of its ``batches`` batches ran to the end.

    The batch running when the interrupt came was abandoned (its tokens are not counted). The window
    ends at the last counter read: where that batch began when the counters were read there (steady
    state) or when there is no counter to read (no GPU, no RAPL), else right after it stopped; then
    ``abandoned_s`` of its work (its start to the end edge) are in the window's time and energy.
    """

    completed: int
    batches: int
    abandoned_s: float


@dataclass(frozen=True)
class Ramp:
    """The leading batches a steady-state cycle left out, and the whole window they were part of."""

    batches: int
    full: CounterWindow
    batch_power_w: list[float | None]


@dataclass(frozen=True)
class Cycle:
    """One measured cycle: its batches and its counter window."""

    index: int
    stats: list[BatchStats]
    window: CounterWindow
    cpu_j: dict[str, float] | None = None  # RAPL zone deltas over the window
    starts_s: list[float] = field(default_factory=list)  # wall clock right before each generate()
    marks: list[CounterMark] = field(default_factory=list)  # steady state: start, batch edges, end
    ramp: Ramp | None = None  # steady state only: the trimmed leading batches (window/stats: the rest)
    read_s: list[float] = field(default_factory=list)  # steady state: each in-window mark's sync + read
    cut: Cut | None = None  # Ctrl-C or SIGTERM cut the cycle short: only its completed batches are in it


class CutShort(KeyboardInterrupt):
    """Ctrl-C or SIGTERM inside a cycle; ``cycle``: its completed batches (None when none completed)."""

    def __init__(self, cycle: Cycle | None) -> None:
        super().__init__("interrupted")
        self.cycle = cycle


@dataclass
class _Batches:
    """What a cycle's batches produced so far (kept when an interrupt cuts the cycle short)."""

    stats: list[BatchStats] = field(default_factory=list)
    starts_s: list[float] = field(default_factory=list)  # wall clock right before each generate()
    marks: list[CounterMark] = field(default_factory=list)  # steady state: start, batch edges
    read_s: list[float] = field(default_factory=list)  # steady state: each batch-edge mark's sync + read


def measure_cycle(
    cfg: ExperimentConfig,
    backend: Backend,
    devices: Sequence[GpuDevice],
    groups: list[list[list[int]]],
    index: int,
    show: Progress,
    cpu: rapl.RaplReader | None = None,
    passes: int = 1,
) -> Cycle:
    """One cycle in the edge order of ``counters.measure_window``; steady state also marks each batch edge.

    The cycle runs ``groups`` ``passes`` times over: cycle ``index``'s order (``workload.cycle_order``) of
    the repeated list, so cycle 0 is dataset order repeated and later cycles shuffle every batch of it.

    Raises:
        CutShort: on KeyboardInterrupt inside the window, holding the cycle of its completed batches.
    """
    if index and cfg.cooldown_s > 0:
        show.stage(f"cool-down {cfg.cooldown_s:g} s")
        time.sleep(cfg.cooldown_s)
    order = workload.cycle_order(groups * passes, index, cfg.seed)
    of = f" (cycle {index + 1}/{cfg.cycles})" if cfg.cycles > 1 else ""
    times = f" x {passes} passes" if passes > 1 else ""
    show.stage(f"measuring {counted(cfg.n, 'prompt')}{times} in {counted(len(order), 'batch')}{of}")
    show.batch("measure", 0, len(order))
    done = _Batches()
    steady_state = cfg.measurement_methodology == "steady_state"

    def mark() -> None:  # steady state: counters at every batch edge, each mark timed
        started = READ_TIMER()
        done.marks.append(counters.read_mark(devices, backend.synchronize, allow_unknown=True))
        done.read_s.append(READ_TIMER() - started)

    start = counters.read_start(devices, backend.synchronize, allow_unknown=True)
    if steady_state:
        done.marks.append(start)
    cpu_start = cpu.read() if cpu else None  # CPU counters at the window's inner edges
    try:
        _generate_all(backend, order, cfg.max_output_tokens, show, done, mark if steady_state else None)
        cpu_end = cpu.read() if cpu else None
        end = counters.read_mark(devices, backend.synchronize, allow_unknown=True)
    except KeyboardInterrupt:
        kept = _cut_short(index, len(order), done, start, devices, backend, cpu, cpu_start)
        raise CutShort(kept) from None
    if steady_state:
        done.marks.append(end)
    return Cycle(
        index=index,
        stats=done.stats,
        window=counters.window_between(start, end, allow_unknown=True),
        cpu_j=_cpu_delta(cpu, cpu_start, cpu_end),
        starts_s=done.starts_s,
        marks=done.marks,
        read_s=done.read_s,
    )


def _cut_short(
    index: int,
    batches: int,
    done: _Batches,
    start: CounterMark,
    devices: Sequence[GpuDevice],
    backend: Backend,
    cpu: rapl.RaplReader | None,
    cpu_start: dict[str, int] | None,
) -> Cycle | None:
    """The cycle of the batches that completed before an interrupt (None: none did); see ``Cut``.

    The abandoned batch is synced away before the end edge is read, so its queued work lands first.
    """
    completed = len(done.stats)
    if not completed:
        return None
    steady_edge = done.marks[completed] if len(done.marks) > completed else None
    abandoned_at = done.starts_s[completed] if len(done.starts_s) > completed else None
    cpu_j = None
    if steady_edge is not None:  # counters were read where the abandoned batch began
        end, abandoned_s = steady_edge, 0.0
    elif not devices and cpu is None and abandoned_at is not None:  # no counter: end where it began
        end, abandoned_s = CounterMark(at_s=abandoned_at, energy_j={}), 0.0
    else:
        end = counters.read_mark(devices, backend.synchronize, allow_unknown=True)
        cpu_j = _cpu_delta(cpu, cpu_start, cpu.read() if cpu else None)
        abandoned_s = max(end.at_s - abandoned_at, 0.0) if abandoned_at is not None else 0.0
    whole = completed == batches  # the interrupt came after the last batch, while the end edge was read
    return Cycle(
        index=index,
        stats=done.stats,
        window=counters.window_between(start, end, allow_unknown=True),
        cpu_j=cpu_j,
        starts_s=done.starts_s[:completed],
        marks=[*done.marks[:completed], end] if done.marks else [],
        read_s=done.read_s[: completed - 1],
        cut=None if whole else Cut(completed=completed, batches=batches, abandoned_s=abandoned_s),
    )


def _cpu_delta(
    cpu: rapl.RaplReader | None, start: dict[str, int] | None, end: dict[str, int] | None
) -> dict[str, float] | None:
    return cpu.delta_j(start, end) if cpu and start is not None and end is not None else None


def _generate_all(
    backend: Backend,
    groups: list[list[list[int]]],
    max_output_tokens: int,
    show: Progress,
    done: _Batches,
    between: Callable[[], None] | None = None,
) -> None:
    """Every batch in order into ``done``; ``between`` runs at each inner batch edge (steady state marks)."""
    for i, group in enumerate(groups):
        if i and between is not None:
            between()
        done.starts_s.append(time.time())  # the queue is empty: the last batch's tokens reached the host
        done.stats.append(backend.generate(group, max_output_tokens))
        show.batch("measure", i + 1, len(groups))
