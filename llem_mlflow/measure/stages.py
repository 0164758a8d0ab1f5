"""The measured part of one experiment, stage by stage: warm-up, idle settle and baseline, cycles,
isolated prefill, idle after.

Owns the order of the stages (each a lap of the run's ``Stopwatch``), the power sampler's lifetime,
the steady-state trim of each cycle and the warnings of the whole measurement. Each stage's own work
lives beside it: ``warmup``, ``cycle`` (one measured cycle, its counter and RAPL edges), ``prefill``,
``counters`` (the CUDA-synced counter edges). Returns a ``Measurement`` of raw windows, batch stats
and the trace; ``run.execute`` derives every figure from it.

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
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import DeviceError
from llem_mlflow.measure import counters, energy, rapl, settle, steady, workload
from llem_mlflow.measure.counters import CounterWindow
from llem_mlflow.measure.cycle import Cut, CutShort, Cycle, Ramp, measure_cycle
from llem_mlflow.measure.prefill import PREFILL_MIN_S, PrefillWindow, isolated_prefill
from llem_mlflow.measure.progress import Progress, counted
from llem_mlflow.measure.records import CpuEnergy, WarmupRecord
from llem_mlflow.measure.sampler import PowerSampler
from llem_mlflow.measure.served_load import ServedLoad
from llem_mlflow.measure.settle import IdleSettle
from llem_mlflow.measure.timings import Stopwatch
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.measure.warmup import warm_up, window_warnings
from llem_mlflow.protocols import Backend, BatchStats, GpuDevice

#: Re-exported: ``run.execute`` reads them here (``measure.Cycle``, ``measure.PREFILL_MIN_S``...).
__all__ = [
    "PREFILL_MIN_S",
    "Cut",
    "Cycle",
    "Interrupted",
    "Measurement",
    "PrefillWindow",
    "Ramp",
    "interrupted_notes",
    "measure",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measurement:
    """What the measured part of a run produced, before any figure is derived."""

    cycles: list[Cycle]
    idle: CounterWindow | None
    trace: PowerTrace
    warnings: list[str]
    cpu_energy: CpuEnergy | None = None
    idle_after: tuple[float, float] | None = None
    warmup: WarmupRecord | None = None
    idle_settle: IdleSettle | None = None
    prefill: PrefillWindow | None = None
    stage_s: dict[str, float] = field(default_factory=dict)  # wall seconds per stage that ran
    served: ServedLoad | None = None  # the server scenario's requests and in-window counter reads

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
    idle: CounterWindow | None = None
    cycles: list[Cycle] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said before the first window (``window_warnings``)


def measure(
    cfg: ExperimentConfig,
    backend: Backend,
    devices: Sequence[GpuDevice],
    prompts: list[list[int]],
    show: Progress,
) -> Measurement:
    """Warm-up, idle baseline, ``cfg.cycles`` measured windows and idle after, with the sampler on.

    Each cycle runs the prompt set ``warmup.passes`` times (``min_window_s``; warm-up and isolated prefill
    run it once); what to say about the windows (``warmup.window_warnings``) is shown before the first.

    Raises:
        Interrupted: on KeyboardInterrupt (Ctrl-C, or SIGTERM under ``interrupts.graceful``), after the
            sampler stopped, with the cycles and batches completed so far (inside a cycle: the running
            batch is abandoned, the counters are read at once and the cycle keeps its completed batches).
    """
    clock = Stopwatch()
    # continuous batching: one group per pass, every prompt in one call (transformers schedules them)
    groups = [list(prompts)] if cfg.batching == "continuous" else workload.batches(prompts, cfg.batch_size)
    progress = _Progress()
    sampler, trace = None, None
    try:
        power_notes: list[str] = []  # the power settle's: a cap reached, a counter read that failed
        with clock.lap("warmup"):
            warmup = progress.warmup = warm_up(cfg, backend, groups, show, devices=devices, notes=power_notes)
        progress.notes = [*power_notes, *window_warnings(cfg, warmup, bool(devices))]
        for note in progress.notes:
            show.stage(f"warning: {note}")
        cpu, cpu_warning = _open_rapl()
        sampler = PowerSampler(devices, cfg.sampling_interval_s, mode=cfg.power_sampling)
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
    trims = _steady_warnings(cfg, cycles)
    warnings = [w for w in [*progress.notes, cpu_warning, *sampler.warnings, *faults, *trims] if w]
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
        warnings=[
            *interrupted_notes(progress.stage, progress.cycles, cfg.cycles),
            *progress.notes,
            *warnings,
        ],
        cpu_energy=_cpu_energy(progress.cycles),
        warmup=progress.warmup,
        idle_settle=progress.settled,
        stage_s=dict(clock.laps),
    )


def interrupted_notes(stage: str, cycles: Sequence[Cycle], of: int, unit: str = "batch") -> list[str]:
    """The warnings of an interrupted run: what it kept and, for a cut cycle, what its figures hold
    (``unit``: what a cycle is made of, batches or, in the server scenario, requests)."""
    whole = sum(1 for c in cycles if c.cut is None)
    last = cycles[-1] if cycles else None
    cut = last.cut if last is not None else None
    kept = f"{whole} of {of} cycle(s) completed"
    if last is None or cut is None:
        return [f"Interrupted during {stage}: {kept}; every figure comes from those (status: interrupted)."]
    notes = [
        f"Interrupted during {stage}: {kept}, and {cut.completed} of {counted(cut.batches, unit)} of "
        f"cycle {last.index + 1}, kept as a partial cycle (cycles.records[{last.index}].partial); every "
        f"figure comes from those {counted(2, unit)[2:]} (status: interrupted); the partial cycle is left "
        "out of the intervals across cycles."
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
    idle: CounterWindow | None
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
            idle = counters.measure_idle(devices, backend.synchronize, cfg.baseline_s, allow_unknown=True)
    progress.idle = idle
    with clock.lap("measure"):
        for i in range(cfg.cycles):
            progress.stage = f"cycle {i + 1} of {cfg.cycles}"
            try:
                passes = progress.warmup.passes if progress.warmup else 1
                progress.cycles.append(measure_cycle(cfg, backend, devices, groups, i, show, cpu, passes))
            except CutShort as cut:  # keep the batches that completed, then stop
                progress.cycles.extend([cut.cycle] if cut.cycle is not None else [])
                raise
    cycles = list(progress.cycles)
    prefill = None
    progress.stage = "isolated prefill"
    with clock.lap("prefill_isolated"):
        if cfg.isolated_prefill:
            prefill = isolated_prefill(backend, devices, groups, show)
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


def _trim_ramp(cycle: Cycle, trace: PowerTrace, devices: Sequence[GpuDevice]) -> Cycle:
    """The cycle's steady part (``steady`` rule): its window starts at the first steady batch."""
    if len(cycle.marks) != len(cycle.stats) + 1:
        return cycle  # not measured with batch-edge marks
    gpus = [d.info.cuda_index for d in devices]
    powers = steady.batch_power_w(trace, gpus, cycle.starts_s, cycle.window.end_s)
    cut = steady.ramp_batches(powers)
    ramp = Ramp(batches=cut, full=cycle.window, batch_power_w=powers)
    window = counters.window_between(cycle.marks[cut], cycle.marks[-1], allow_unknown=True)
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
    """Model-resident idle after the last cycle, ``idle_after_s`` long, seen by the trace only.

    Its one use is the drift check against the baseline (``idle_after_w``, the ``idle_drift`` flag), so
    it is skipped (None) where there is nothing to compare: no GPU, no baseline, or ``idle_after_s`` 0.
    """
    if not devices or cfg.baseline_s <= 0 or cfg.idle_after_s <= 0:
        return None
    show.stage(f"idle after the last cycle {cfg.idle_after_s:g} s (drift check)")
    backend.synchronize()
    start_s = time.time()
    time.sleep(cfg.idle_after_s)
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
