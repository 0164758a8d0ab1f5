"""The measured part of one experiment: warm-up, idle baseline, cycles, idle after.

Owns the order of GPU work and of counter reads (``energy.measure_window``'s CUDA-synced edges), the
power sampler's lifetime, RAPL reads at each cycle's inner edges, and the warm-up rules. Returns a
``Measurement`` of raw windows, batch stats and the trace; ``runner`` derives every figure from it.

NVML faults never end the run (docs/reliability/nvml-faults.md): windows are measured with
``allow_unknown``, so a GPU whose counter delta cannot be taken is left out of that window, and
``Measurement.warnings`` names each such GPU and window; a power reading failing during idle settle
skips the settle.

Ctrl-C or SIGTERM inside a cycle abandons the running batch, syncs, reads the counters and keeps the
cycle's completed batches as a cycle with ``Cut`` (see ``Interrupted``): nothing measured is lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from llem_mlflow.backends import fastpath
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import DeviceError
from llem_mlflow.measure import energy, rapl, settle, steady, workload
from llem_mlflow.measure.progress import Progress
from llem_mlflow.measure.sampler import PowerSampler
from llem_mlflow.measure.settle import IdleSettle
from llem_mlflow.measure.timings import Stopwatch
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.protocols import Backend, BatchStats, GpuDevice
from llem_mlflow.results.schema import CpuEnergy, WarmupRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cycle:
    """One measured cycle: its batches and its counter window."""

    index: int
    stats: list[BatchStats]
    window: energy.CounterWindow
    cpu_j: dict[str, float] | None = None  # RAPL zone deltas over the window
    starts_s: list[float] = field(default_factory=list)  # wall clock right before each generate()
    marks: list[energy.CounterMark] = field(default_factory=list)  # steady state: start, batch edges, end
    ramp: Ramp | None = None  # steady state only: the trimmed leading batches (window/stats: the rest)
    read_s: list[float] = field(default_factory=list)  # steady state: each in-window mark's sync + read
    cut: Cut | None = None  # Ctrl-C or SIGTERM cut the cycle short: only its completed batches are in it


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
    full: energy.CounterWindow
    batch_power_w: list[float | None]


@dataclass(frozen=True)
class PrefillWindow:
    """Isolated prefill: ``passes`` passes over every batch with one new token, in one counter window."""

    passes: int
    batches_per_pass: int
    input_tokens_per_pass: int
    window: energy.CounterWindow


@dataclass(frozen=True)
class Measurement:
    """What the measured part of a run produced, before any figure is derived."""

    cycles: list[Cycle]
    idle: energy.CounterWindow | None
    trace: PowerTrace
    warnings: list[str]
    cpu_energy: CpuEnergy | None = None
    idle_after: tuple[float, float] | None = None
    warmup: WarmupRecord | None = None
    idle_settle: IdleSettle | None = None
    prefill: PrefillWindow | None = None
    stage_s: dict[str, float] = field(default_factory=dict)  # wall seconds per stage that ran

    @property
    def stats(self) -> list[BatchStats]:
        """Every measured batch of every cycle."""
        return [s for c in self.cycles for s in c.stats]

    @property
    def span(self) -> tuple[float, float]:
        """From the first cycle's start to the last cycle's end (epoch seconds)."""
        return self.cycles[0].window.start_s, self.cycles[-1].window.end_s

    @property
    def seconds(self) -> float:
        """Time spent inside measured windows (cool-downs excluded)."""
        return sum(c.window.duration_s for c in self.cycles)


class Interrupted(Exception):  # noqa: N818 - it names what happened, like KeyboardInterrupt
    """Ctrl-C or SIGTERM stopped ``measure``.

    ``stage``: where it stopped; ``partial``: what was measured until then as a ``Measurement``: the
    completed cycles and, when it stopped inside a cycle, that cycle's completed batches as a last cycle
    with ``cut`` set (None when no measured batch completed); ``trace``: the power samples taken (None
    before sampling began).
    """

    def __init__(self, stage: str, partial: Measurement | None, trace: PowerTrace | None) -> None:
        super().__init__(f"interrupted during {stage}")
        self.stage, self.partial, self.trace = stage, partial, trace


@dataclass
class _Progress:
    """What the stages have produced so far (kept when a run is interrupted)."""

    stage: str = "warm-up"
    warmup: WarmupRecord | None = None
    settled: IdleSettle | None = None
    idle: energy.CounterWindow | None = None
    cycles: list[Cycle] = field(default_factory=list)


def measure(
    cfg: ExperimentConfig,
    backend: Backend,
    devices: Sequence[GpuDevice],
    prompts: list[list[int]],
    show: Progress,
) -> Measurement:
    """Warm-up, idle baseline, ``cfg.cycles`` measured windows and idle after, with the sampler on.

    Raises:
        Interrupted: on KeyboardInterrupt (Ctrl-C, or SIGTERM under ``interrupts.graceful``), after the
            sampler stopped, with the cycles and batches completed so far (inside a cycle: the running
            batch is abandoned, the counters are read at once and the cycle keeps its completed batches).
    """
    clock = Stopwatch()
    groups = workload.batches(prompts, cfg.batch_size)
    progress = _Progress()
    sampler, trace = None, None
    try:
        with clock.lap("warmup"):
            warmup = progress.warmup = _warm_up(cfg, backend, groups, show)
        cpu, cpu_warning = _open_rapl()
        sampler = PowerSampler(devices, cfg.sampling_interval_s)
        sampler.start()
        try:
            done = _sampled_stages(cfg, backend, devices, groups, show, cpu, clock, progress)
        finally:
            trace = sampler.stop()
    except KeyboardInterrupt:
        warnings = sampler.warnings if sampler is not None else []
        raise Interrupted(progress.stage, _partial(cfg, progress, trace, warnings, clock), trace) from None
    cycles = done.cycles
    if cfg.measurement_methodology == "steady_state":
        cycles = [_trim_ramp(c, trace, devices) for c in cycles]
    faults = [*done.faults, *_fault_warnings(done, cycles, trace, devices)]
    faults += cpu.warnings if cpu else []  # RAPL counters that wrapped inside a window
    warnings = [w for w in [cpu_warning, *sampler.warnings, *faults, *_steady_warnings(cfg, cycles)] if w]
    return Measurement(
        cycles=cycles,
        idle=done.idle,
        trace=trace,
        warnings=warnings,
        cpu_energy=_cpu_energy(cycles),
        idle_after=done.idle_after,
        warmup=warmup,
        idle_settle=done.settled,
        prefill=done.prefill,
        stage_s=done.ran(clock.laps),
    )


def _partial(
    cfg: ExperimentConfig,
    progress: _Progress,
    trace: PowerTrace | None,
    warnings: list[str],
    clock: Stopwatch,
) -> Measurement | None:
    """What an interrupted run measured as a Measurement: its completed cycles and, when the interrupt
    came inside a cycle, that cycle's completed batches (a cycle with ``cut``); None when neither exists.
    """
    if not progress.cycles or trace is None:
        return None
    return Measurement(
        cycles=list(progress.cycles),
        idle=progress.idle,
        trace=trace,
        warnings=[*interrupted_notes(progress.stage, progress.cycles, cfg.cycles), *warnings],
        cpu_energy=_cpu_energy(progress.cycles),
        warmup=progress.warmup,
        idle_settle=progress.settled,
        stage_s=dict(clock.laps),
    )


def interrupted_notes(stage: str, cycles: Sequence[Cycle], of: int) -> list[str]:
    """The warnings of an interrupted run: what it kept and, for a cut cycle, what its figures hold."""
    whole = sum(1 for c in cycles if c.cut is None)
    last = cycles[-1] if cycles else None
    cut = last.cut if last is not None else None
    kept = f"{whole} of {of} cycle(s) completed"
    if last is None or cut is None:
        return [f"Interrupted during {stage}: {kept}; every figure comes from those (status: interrupted)."]
    notes = [
        f"Interrupted during {stage}: {kept}, and {cut.completed} of {_count(cut.batches, 'batch')} of "
        f"cycle {last.index + 1}, kept as a partial cycle (cycles.records[{last.index}].partial); every "
        "figure comes from those batches (status: interrupted); the partial cycle is left out of the "
        "intervals across cycles."
    ]
    share = cut.abandoned_s / last.window.duration_s if last.window.duration_s > 0 else 0.0
    if 0 < share < 1:
        notes.append(
            f"The partial cycle's window holds {cut.abandoned_s:.3f} s ({share:.2%}) of the batch the "
            "interrupt abandoned: its work is in the time and energy, its tokens are not, so its tok/s is "
            f"{share:.2%} low and its J/token about {share / (1 - share):.2%} high (at even power)."
        )
    return notes


@dataclass(frozen=True)
class _Sampled:
    """What the stages run with the sampler on produced; None: the stage did not run."""

    settled: IdleSettle | None
    idle: energy.CounterWindow | None
    cycles: list[Cycle]
    prefill: PrefillWindow | None
    idle_after: tuple[float, float] | None
    faults: list[str] = field(default_factory=list)  # device read errors outside counter windows

    def ran(self, laps: dict[str, float]) -> dict[str, float]:
        """The laps of the stages that ran."""
        skipped = {
            "idle_settle": self.settled is None,
            "baseline": self.idle is None,
            "prefill_isolated": self.prefill is None,
            "idle_after": self.idle_after is None,
        }
        return {name: s for name, s in laps.items() if not skipped.get(name, False)}


def _sampled_stages(
    cfg: ExperimentConfig,
    backend: Backend,
    devices: Sequence[GpuDevice],
    groups: list[list[list[int]]],
    show: Progress,
    cpu: rapl.RaplReader | None,
    clock: Stopwatch,
    progress: _Progress,
) -> _Sampled:
    """Idle settle, baseline, cycles (cool-downs included), isolated prefill and idle after, each a lap.

    ``progress`` records each stage as it starts and each result as it is made.
    """
    faults: list[str] = []
    progress.stage = "idle settle"
    with clock.lap("idle_settle"):
        settled = progress.settled = _settle(cfg, devices, backend, show, faults)
    idle = None
    progress.stage = "idle baseline"
    with clock.lap("baseline"):
        if devices and cfg.baseline_s > 0:
            show.stage(f"idle baseline {cfg.baseline_s:g} s (model loaded)")
            idle = energy.measure_idle(devices, backend.synchronize, cfg.baseline_s, allow_unknown=True)
    progress.idle = idle
    with clock.lap("measure"):
        for i in range(cfg.cycles):
            progress.stage = f"cycle {i + 1} of {cfg.cycles}"
            try:
                progress.cycles.append(_measure_cycle(cfg, backend, devices, groups, i, show, cpu))
            except _CutShort as cut:  # keep the batches that completed, then stop
                progress.cycles.extend([cut.cycle] if cut.cycle is not None else [])
                raise
    cycles = list(progress.cycles)
    prefill = None
    progress.stage = "isolated prefill"
    with clock.lap("prefill_isolated"):
        if cfg.isolated_prefill:
            prefill = _isolated_prefill(cfg, backend, devices, groups, show)
    progress.stage = "idle after"
    with clock.lap("idle_after"):
        idle_after = _idle_after(cfg, devices, backend, show)
    return _Sampled(settled, idle, cycles, prefill, idle_after, faults)


def _settle(
    cfg: ExperimentConfig, devices: Sequence[GpuDevice], backend: Backend, show: Progress, faults: list[str]
) -> IdleSettle | None:
    """Wait for idle power to stop drifting before the baseline (``idle_settle_max_s > 0``).

    A power reading that fails ends the wait: the settle is skipped (None) and ``faults`` says why.
    """
    if not devices or cfg.idle_settle_max_s <= 0 or cfg.baseline_s <= 0:
        return None
    show.stage(f"waiting up to {cfg.idle_settle_max_s:g} s for idle power to settle")
    backend.synchronize()
    try:
        return settle.settle_idle(lambda: sum(d.power_w() for d in devices), cfg.idle_settle_max_s)
    except DeviceError as e:
        faults.append(f"Idle settle skipped: a power reading failed ({e}); the baseline was taken at once.")
        return None


def _fault_warnings(
    done: _Sampled, cycles: list[Cycle], trace: PowerTrace, devices: Sequence[GpuDevice]
) -> list[str]:
    """Each window's unknown or wrapped counter deltas, and trace gaps that skip the cross-check."""
    out = energy.fault_warnings("idle baseline", done.idle, energy.IDLE_EFFECT) if done.idle else []
    measured = [(f"cycle {c.index + 1}/{len(cycles)}", c.window, energy.MEASURED_EFFECT) for c in cycles]
    if done.prefill:
        measured.append(("isolated prefill", done.prefill.window, energy.PREFILL_EFFECT))
    gpus = [d.info.cuda_index for d in devices]
    for label, window, effect in measured:
        out += energy.fault_warnings(label, window, effect)
        out += energy.sparse_trace_warnings(label, window, trace, gpus)
    full = "steady_state.full_window_gross_j is null for this cycle"
    for c in cycles:  # steady state: the whole window, ramp included, feeds full_window_gross_j
        if c.ramp is not None and set(c.ramp.full.unknown) - set(c.window.unknown):
            out += energy.fault_warnings(
                f"cycle {c.index + 1}/{len(cycles)} with its ramp", c.ramp.full, full
            )
    return out


#: Isolated prefill: keep making passes until the window spans this many seconds (20 counter updates).
PREFILL_MIN_S = 2.0
PREFILL_MAX_PASSES = 1000


def _isolated_prefill(
    cfg: ExperimentConfig,
    backend: Backend,
    devices: Sequence[GpuDevice],
    groups: list[list[list[int]]],
    show: Progress,
) -> PrefillWindow:
    """Whole passes of ``generate(max_new_tokens=1)`` over every batch, until the window is >= 2 s.

    One unmeasured pass over the first batch comes first (the one-token path's own warm-up).
    """
    show.stage(f"isolated prefill: passes with one new token, at least {PREFILL_MIN_S:g} s")
    backend.generate(groups[0], 1)
    passes = 0
    tokens = 0

    def body() -> None:
        nonlocal passes, tokens
        started = time.perf_counter()
        while passes < PREFILL_MAX_PASSES and (not passes or time.perf_counter() - started < PREFILL_MIN_S):
            tokens = sum(backend.generate(group, 1).input_tokens for group in groups)
            passes += 1
            backend.synchronize()

    _, window = energy.measure_window(devices, backend.synchronize, body, allow_unknown=True)
    return PrefillWindow(
        passes=passes, batches_per_pass=len(groups), input_tokens_per_pass=tokens, window=window
    )


def _trim_ramp(cycle: Cycle, trace: PowerTrace, devices: Sequence[GpuDevice]) -> Cycle:
    """The cycle's steady part (``steady`` rule): its window starts at the first steady batch."""
    if len(cycle.marks) != len(cycle.stats) + 1:
        return cycle  # not measured with batch-edge marks
    gpus = [d.info.cuda_index for d in devices]
    powers = steady.batch_power_w(trace, gpus, cycle.starts_s, cycle.window.end_s)
    cut = steady.ramp_batches(powers)
    ramp = Ramp(batches=cut, full=cycle.window, batch_power_w=powers)
    window = energy.window_between(cycle.marks[cut], cycle.marks[-1], allow_unknown=True)
    return replace(cycle, stats=cycle.stats[cut:], starts_s=cycle.starts_s[cut:], window=window, ramp=ramp)


def _steady_warnings(cfg: ExperimentConfig, cycles: list[Cycle]) -> list[str]:
    if cfg.measurement_methodology != "steady_state" or len(cycles[0].marks) > 2:
        return []
    return [
        "steady_state: each cycle has one batch, so no ramp can be trimmed (the whole window is used); "
        "use more prompts than batch_size"
    ]


def _idle_after(
    cfg: ExperimentConfig, devices: Sequence[GpuDevice], backend: Backend, show: Progress
) -> tuple[float, float] | None:
    """Model-resident idle after the last cycle, as long as the baseline, seen by the trace only."""
    if not devices or cfg.baseline_s <= 0:
        return None
    show.stage(f"idle after the last cycle {cfg.baseline_s:g} s (drift check)")
    backend.synchronize()
    start_s = time.time()
    time.sleep(cfg.baseline_s)
    return start_s, time.time()


def _open_rapl() -> tuple[rapl.RaplReader | None, str | None]:
    """The RAPL reader, or None; a warning only when powercap exists but cannot be read."""
    reader, reason = rapl.RaplReader.open(rapl.POWERCAP_ROOT)
    if reader is None:
        log.info("CPU energy not measured: %s", reason)
        exists = rapl.POWERCAP_ROOT.is_dir()
        return None, f"CPU energy not measured: {reason}" if exists else None
    return reader, None


def _cpu_energy(cycles: list[Cycle]) -> CpuEnergy | None:
    if not cycles or any(c.cpu_j is None for c in cycles):
        return None
    package, dram = zip(*(rapl.cpu_energy_j(c.cpu_j or {}) for c in cycles), strict=True)
    return CpuEnergy(
        package_j=None if None in package else sum(p for p in package if p is not None),
        dram_j=None if None in dram else sum(d for d in dram if d is not None),
    )


def _warm_up(
    cfg: ExperimentConfig, backend: Backend, groups: list[list[list[int]]], show: Progress
) -> WarmupRecord:
    """Warm up on the measured batches (same shapes): ``warmup_batches``, or until latency settles.

    Settle rule: after at least max(``warmup_batches``, 3) batches, stop once the CV of the last 3
    batch latencies is below ``warmup_settle_cv_pct``, or at ``warmup_max_batches``.
    """
    compile_batches, compile_s = _compile_warm_up(cfg, backend, groups, show)
    settle = cfg.warmup_settle_cv_pct
    least = max(cfg.warmup_batches, _SETTLE_WINDOW) if settle else cfg.warmup_batches
    most = max(cfg.warmup_max_batches, least) if settle else cfg.warmup_batches
    latencies: list[float] = []
    if most:
        span = _count(most, "batch") if least == most else f"{least}-{most} batches"
        show.stage(f"warm-up: {'until latency settles, ' if settle else ''}{span}")
        show.batch("warm-up", 0, most)  # the display starts outside the measured window
    settled = False
    while len(latencies) < most and not settled:
        backend.synchronize()
        t0 = time.perf_counter()
        backend.generate(groups[len(latencies) % len(groups)], cfg.max_output_tokens)
        backend.synchronize()
        latencies.append(time.perf_counter() - t0)
        show.batch("warm-up", len(latencies), most)
        if settle is not None and len(latencies) >= least:
            settled = _cv_pct(latencies[-_SETTLE_WINDOW:]) < settle
    rule = f"settle: CV of the last {_SETTLE_WINDOW} < {settle}%, {least}-{most} batches" if settle else ""
    return WarmupRecord(
        batches=len(latencies),
        latencies_s=latencies,
        rule=rule or f"fixed: {_count(cfg.warmup_batches, 'batch')}",
        settled=settled if settle else None,
        compile_batches=compile_batches,
        compile_s=compile_s,
    )


def _compile_warm_up(
    cfg: ExperimentConfig, backend: Backend, groups: list[list[list[int]]], show: Progress
) -> tuple[int, float | None]:
    """With ``compile``: one batch of each batch size first, so compile and capture stay out of windows."""
    todo = fastpath.warmup_groups(cfg, groups)
    if not todo:
        return 0, None
    show.stage(f"compiling: {_count(len(todo), 'batch size')} ({cfg.compile}, static cache)")
    backend.synchronize()
    t0 = time.perf_counter()
    for group in todo:
        backend.generate(list(group), cfg.max_output_tokens)
    backend.synchronize()
    return len(todo), time.perf_counter() - t0


_SETTLE_WINDOW = 3


def _cv_pct(values: list[float]) -> float:
    mean = sum(values) / len(values)
    if len(values) < 2 or mean <= 0:
        return float("inf")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return float(var**0.5 / mean * 100)


#: Times each in-window counter mark (steady state); a test puts a fake clock here.
READ_TIMER: Callable[[], float] = time.perf_counter


class _CutShort(KeyboardInterrupt):
    """Ctrl-C or SIGTERM inside a cycle; ``cycle``: its completed batches (None when none completed)."""

    def __init__(self, cycle: Cycle | None) -> None:
        super().__init__("interrupted")
        self.cycle = cycle


@dataclass
class _Batches:
    """What a cycle's batches produced so far (kept when an interrupt cuts the cycle short)."""

    stats: list[BatchStats] = field(default_factory=list)
    starts_s: list[float] = field(default_factory=list)  # wall clock right before each generate()
    marks: list[energy.CounterMark] = field(default_factory=list)  # steady state: start, batch edges
    read_s: list[float] = field(default_factory=list)  # steady state: each batch-edge mark's sync + read


def _measure_cycle(
    cfg: ExperimentConfig,
    backend: Backend,
    devices: Sequence[GpuDevice],
    groups: list[list[list[int]]],
    index: int,
    show: Progress,
    cpu: rapl.RaplReader | None = None,
) -> Cycle:
    """One cycle in the edge order of ``energy.measure_window``; steady state also marks each batch edge.

    Raises:
        _CutShort: on KeyboardInterrupt inside the window, holding the cycle of its completed batches.
    """
    if index and cfg.cooldown_s > 0:
        show.stage(f"cool-down {cfg.cooldown_s:g} s")
        time.sleep(cfg.cooldown_s)
    order = workload.cycle_order(groups, index, cfg.seed)
    of = f" (cycle {index + 1}/{cfg.cycles})" if cfg.cycles > 1 else ""
    show.stage(f"measuring {_count(cfg.n, 'prompt')} in {_count(len(order), 'batch')}{of}")
    show.batch("measure", 0, len(order))
    done = _Batches()
    steady_state = cfg.measurement_methodology == "steady_state"

    def mark() -> None:  # steady state: counters at every batch edge, each mark timed
        started = READ_TIMER()
        done.marks.append(energy.read_mark(devices, backend.synchronize, allow_unknown=True))
        done.read_s.append(READ_TIMER() - started)

    start = energy.read_start(devices, backend.synchronize, allow_unknown=True)
    if steady_state:
        done.marks.append(start)
    cpu_start = cpu.read() if cpu else None  # CPU counters at the window's inner edges
    try:
        _generate_all(backend, order, cfg.max_output_tokens, show, done, mark if steady_state else None)
        cpu_end = cpu.read() if cpu else None
        end = energy.read_mark(devices, backend.synchronize, allow_unknown=True)
    except KeyboardInterrupt:
        kept = _cut_short(index, len(order), done, start, devices, backend, cpu, cpu_start)
        raise _CutShort(kept) from None
    if steady_state:
        done.marks.append(end)
    return Cycle(
        index=index,
        stats=done.stats,
        window=energy.window_between(start, end, allow_unknown=True),
        cpu_j=_cpu_delta(cpu, cpu_start, cpu_end),
        starts_s=done.starts_s,
        marks=done.marks,
        read_s=done.read_s,
    )


def _cut_short(
    index: int,
    batches: int,
    done: _Batches,
    start: energy.CounterMark,
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
        end, abandoned_s = energy.CounterMark(at_s=abandoned_at, energy_j={}), 0.0
    else:
        end = energy.read_mark(devices, backend.synchronize, allow_unknown=True)
        cpu_j = _cpu_delta(cpu, cpu_start, cpu.read() if cpu else None)
        abandoned_s = max(end.at_s - abandoned_at, 0.0) if abandoned_at is not None else 0.0
    whole = completed == batches  # the interrupt came after the last batch, while the end edge was read
    return Cycle(
        index=index,
        stats=done.stats,
        window=energy.window_between(start, end, allow_unknown=True),
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


def _count(n: int, noun: str) -> str:
    """``1 batch``, ``2 batches``, ``1 prompt``, ``3 prompts``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}es" if noun.endswith(("ch", "sh", "s", "x")) else f"{n} {noun}s"


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
