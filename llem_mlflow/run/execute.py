"""run_experiment: the order of operations of one experiment, in the calling process.

checks (output folder, MLflow store, dataset, tokenizer, context; see ``preflight``) -> load
model -> resolved settings and hash -> result folder -> ``measure`` (warm-up, idle baseline,
cycles of counter windows at CUDA-synced edges with the power sampler alongside, idle after) ->
derived figures (energy, intervals, uncertainty, flags, FLOPs, latency) -> environment ->
ExperimentResult -> result.json + timeseries.parquet -> MLflow. The backend, the GPU provider,
the store probe and the progress display are injected, so tests run the whole sequence on fakes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from llem_mlflow import interrupts
from llem_mlflow._version import __version__
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.errors import BackendError, DeviceError, RunInterrupted, TrackingError
from llem_mlflow.figures import carbon, flops, latency, peaks, phases, quality, stats
from llem_mlflow.figures.stats import Interval
from llem_mlflow.measure import energy, steady
from llem_mlflow.measure import stages as measure
from llem_mlflow.measure.progress import LogProgress, Progress
from llem_mlflow.measure.timings import Stopwatch
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.protocols import Backend, CudaDeviceId, GpuDevice, GpuInfo, LoadedModel
from llem_mlflow.results import assess, environment, identity
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import (
    ComputeFigures,
    CpuEnergy,
    CycleRecord,
    CycleStats,
    EnergyBreakdown,
    ExperimentResult,
    IsolatedPrefill,
    PartialCycle,
    PhaseEnergy,
    SteadyState,
    Timings,
    Uncertainty,
    Window,
)
from llem_mlflow.run import preflight
from llem_mlflow.tracking import client as tracking
from llem_mlflow.tracking import recording, spool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSet:
    """The GPUs the model uses, opened for measurement (empty: energy is not measured)."""

    devices: Sequence[GpuDevice]
    driver_version: str | None
    warning: str | None = None
    close: Callable[[], None] = lambda: None  # releases NVML once the measurement is over


GpuProvider = Callable[[Sequence[CudaDeviceId]], GpuSet]


@dataclass(frozen=True)
class Outcome:
    """What one run produced: the result, its folder and the MLflow run id (None with mlflow off)."""

    result: ExperimentResult
    result_dir: Path
    run_id: str | None
    tracking_error: str | None = None  # MLflow failed after the files were written (message has the hint)
    write_error: str | None = None  # the result folder could not hold the files: what was kept where
    timings: Timings | None = None  # every stage to the end of logging (result.timings: to result.json)


@dataclass(frozen=True)
class _Context:
    """What was decided before measuring: config, identity, model, GPUs and prepared prompts."""

    cfg: ExperimentConfig
    start: datetime
    experiment_id: str
    resolved: identity.ResolvedSettings
    loaded: LoadedModel
    gpu_set: GpuSet
    plan: preflight.Plan


def run_experiment(config: str | Path | ExperimentConfig | None = None, **overrides: Any) -> ExperimentResult:
    """Run one experiment in this process, write its files and log it to MLflow.

    Args:
        config: a YAML path, an ``ExperimentConfig``, or None for defaults.
        **overrides: config fields to override (e.g. ``model="gpt2", n=4``).

    Returns:
        The validated ``ExperimentResult`` (also written to ``<output_dir>/<experiment_id>/result.json``).

    Raises:
        ConfigError: invalid configuration (raised before any weight is loaded).
        TrackingError: MLflow logging failed after measuring; the files are saved and the message
            says how to log them later. Other ``LlemError``s: runtime failures.
    """
    outcome = execute(load_config(config, **overrides))
    if outcome.tracking_error or outcome.write_error:
        raise TrackingError("\n".join(e for e in (outcome.write_error, outcome.tracking_error) if e))
    return outcome.result


def execute(
    cfg: ExperimentConfig,
    *,
    backend: Backend | None = None,
    gpus: GpuProvider | None = None,
    progress: Progress | None = None,
    store_probe: preflight.StoreProbe | None = None,
    startup_s: float | None = None,
    child_of: tracking.ChildOf | None = None,
) -> Outcome:
    """Run ``cfg`` with injectable parts: checks, load, measure, write files, then log to MLflow.

    Every check runs before the model loads (``preflight``); the result folder exists before the
    GPU works; files are written before MLflow is called, and a logging failure is returned in
    ``Outcome.tracking_error`` instead of raised, so the measurement is never lost. MLflow is
    imported in the background while the model loads (``tracking.prefetch``), and that import has
    ended before the GPU works. ``startup_s``: seconds from process start to this call, when the
    caller knows them (the CLI); they go into the timings block. ``child_of``: log into a new run
    nested under that parent (a sweep's point; see ``tracking``).
    """
    if backend is None:  # bad-input/OOM: a backend this run made is released when the run fails
        kw = {"gpus": gpus, "progress": progress, "store_probe": store_probe, "startup_s": startup_s}
        return _owning(cfg, _default_backend(cfg), child_of=child_of, **kw)
    clock = Stopwatch()
    interrupts.last_words(None)  # an earlier run's, in this process
    if startup_s is not None:
        clock.laps["startup"] = startup_s  # before the stopwatch started: not part of total_s
    show = progress or LogProgress()
    probe = store_probe or _probe_store
    start = datetime.now(timezone.utc)
    show.stage("checking output folder, dataset, context length and MLflow store")
    with clock.lap("checks"):
        plan = preflight.check(cfg, backend, probe)
    for warning in plan.warnings:
        log.warning(warning)
    imports = tracking.prefetch(cfg.tracking_uri) if cfg.mlflow else None
    show.stage(f"loading {cfg.model} ({cfg.weights} weights)")
    with clock.lap("load"):
        loaded = backend.load()
    resolved = _resolve(cfg, loaded, plan)
    config_hash = resolved.measurement_hash()
    folder, experiment_id = artifacts.claim_result_dir(
        Path(cfg.output_dir), lambda: _experiment_id(start, config_hash)
    )
    gpu_set = (gpus or _nvml_gpus)(loaded.cuda_devices) if loaded.device == "cuda" else _no_gpu(loaded)
    _await(imports, clock)
    context = _Context(cfg, start, experiment_id, resolved, loaded, gpu_set, plan)
    how = _Logging(probe if plan.store_warning else None, child_of)
    with contextlib.ExitStack() as after:  # from the last measured batch until the files are written
        after.enter_context(interrupts.exit_line(_log_later(folder)))  # outlives the holding block
        measurement, held = _measure(context, backend, folder, replace(how, reprobe=None), show, clock, after)
        with clock.lap("derive"):
            result = _build_result(context, measurement, backend)
        written = _write(result, measurement, folder, show, clock)
    if held.signal:
        _stop_unlogged(cfg, written, how, held.signal)
    outcome = _finish(cfg, written, measurement, how, show, clock)
    return replace(outcome, timings=_timings(clock))


def _measure(
    c: _Context,
    backend: Backend,
    folder: Path,
    how: _Logging,
    show: Progress,
    clock: Stopwatch,
    after: contextlib.ExitStack,
) -> tuple[measure.Measurement, interrupts.Held]:
    """``measure.measure`` with the GPUs released after; an interrupt ends in ``_interrupted``.

    From a first Ctrl-C on, a second one waits (``interrupts.keeping``) until what was measured is
    written: the counters read at the cut and the result files are never lost to it. Once measuring
    has ended, ``after`` holds a first signal (``interrupts.holding``) until the caller has written
    the files: the returned ``Held`` names it.
    """
    kept: _Kept | None = None
    with interrupts.keeping():
        try:
            m = measure.measure(c.cfg, backend, c.gpu_set.devices, c.plan.prompts, show)
            held = after.enter_context(interrupts.holding())
        except BackendError:  # e.g. out of memory: nothing was written, leave no empty result folder
            _remove_if_empty(folder)
            raise
        except measure.Interrupted as stop:
            c.gpu_set.close()
            kept = _keep(c, stop, folder, backend, show, clock)
        finally:
            c.gpu_set.close()
    if kept is not None:
        _interrupted(c.cfg, kept, how, show, clock)
    clock.laps.update(m.stage_s)
    return _with_gpu_warning(m, c.gpu_set), held


def _with_gpu_warning(m: measure.Measurement, gpu_set: GpuSet) -> measure.Measurement:
    """``m`` with the GPU set's warning (why energy is not measured) first, when there is one."""
    return replace(m, warnings=[gpu_set.warning, *m.warnings]) if gpu_set.warning else m


@dataclass(frozen=True)
class _Kept:
    """What an interrupted run wrote: its result (None: no measured batch completed) or a trace note."""

    stage: str
    partial: measure.Measurement | None
    written: _Written | None
    note: str = ""


def _keep(
    c: _Context, stop: measure.Interrupted, folder: Path, backend: Backend, show: Progress, clock: Stopwatch
) -> _Kept:
    """Write what an interrupted run measured: a result with ``status: interrupted`` and its files
    from the completed cycles and batches, or, when no measured batch completed, the partial trace."""
    if stop.partial is None:
        return _Kept(stop.stage, None, None, _keep_trace(stop.trace, folder))
    clock.laps.update(stop.partial.stage_s)
    partial = _with_gpu_warning(stop.partial, c.gpu_set)
    result = _build_result(c, partial, backend).model_copy(update={"status": "interrupted"})
    return _Kept(stop.stage, partial, _write(result, partial, folder, show, clock))


def _interrupted(
    cfg: ExperimentConfig, kept: _Kept, how: _Logging, show: Progress, clock: Stopwatch
) -> NoReturn:
    """Log what ``_keep`` wrote, then raise ``RunInterrupted`` saying what was kept.

    A result: its MLflow run ends KILLED (or is spooled). None: the partial trace alone, no MLflow run.
    """
    if kept.written is None or kept.partial is None:
        raise RunInterrupted(f"interrupted during {kept.stage}: no measured batch had completed; {kept.note}")
    cycles = kept.partial.cycles
    whole = sum(1 for cycle in cycles if cycle.cut is None)
    cut = cycles[-1].cut
    batches = f" and {cut.completed} of {cut.batches} batches of cycle {cycles[-1].index + 1}" if cut else ""
    what = f"interrupted during {kept.stage}: kept {whole} of {cfg.cycles} completed cycle(s){batches}"
    try:
        outcome = _publish(cfg, kept.written, kept.partial, how, show, clock)
    except _Cut as stop:
        _stop(f"{what} {_where(kept.written, 'logging was cut short')}: {stop}", stop.outcome)
    _stop(f"{what} {_where(kept.written, _logged_note(outcome, how))}", outcome)


def _stop(message: str, outcome: Outcome) -> NoReturn:
    """Raise ``RunInterrupted`` saying what was kept; a signal before the CLI prints it says it too."""
    interrupts.last_words(message)
    raise RunInterrupted(message, outcome)


def _where(w: _Written, note: str) -> str:
    """'in DIR (status: S; NOTE)': where the result files are, and ``note``."""
    place = f"in {w.folder}" if w.on_disk else "in memory only (no file could be written)"
    return f"{place} (status: {w.result.status}; {note})"


def _logged_note(outcome: Outcome, how: _Logging) -> str:
    """What logging did with an interrupted run's result, in a few words (see ``_killed``)."""
    if outcome.run_id:
        return _killed(outcome.run_id, how.mlflow_run)
    if outcome.tracking_error:
        return outcome.tracking_error.splitlines()[0]
    return "not logged (--no-mlflow)"


def _killed(run_id: str, mlflow_run: str | None) -> str:
    """'MLflow run X ended KILLED'; for the run of ``mlflow run``, also what ``mlflow run`` makes of it."""
    if run_id != mlflow_run or tracking.mlflow_run_keeps_status():
        return f"MLflow run {run_id} ended KILLED"
    return (
        f"MLflow run {run_id} ended KILLED, but `mlflow run` marks it FAILED and exits 1 once this process "
        f"exits {interrupts.EXIT_CODE} (MLflow {tracking.mlflow_version()} overrides a KILLED status)"
    )


def _log_later(folder: Path) -> str:
    """The way back when the process exits before logging: the command that logs ``folder``."""
    return f"MLflow logging skipped; `llem-mlflow log {folder}` logs what was written there"


def _keep_trace(trace: PowerTrace | None, folder: Path) -> str:
    """Write the partial trace when it has samples (else remove the empty folder); say what was kept."""
    if trace is None or not trace.samples:
        _remove_if_empty(folder)
        return "nothing was measured, nothing kept"
    path = artifacts.write_trace_parquet(trace, folder, {})
    return f"kept the partial power trace in {path}"


def _gross(m: measure.Measurement, breakdown: EnergyBreakdown | None) -> tuple[float | None, list[str]]:
    """The run's total energy, or None with a warning when a GPU's delta is unknown in a measured window.

    A partial sum would be too low; the total (and J/token, carbon, MFU's energy figures) stays null
    instead, while ``energy.partial_gross_j`` and each GPU's keep the known deltas for inspection.
    """
    if breakdown is None:
        return None, []
    unknown = sorted({gpu for c in m.cycles for gpu in c.window.unknown})
    if not unknown and breakdown.gross_j is not None:
        return breakdown.gross_j, []
    gpus = ", ".join(map(str, unknown))
    return None, [
        f"Total energy not reported (null): the counter delta of GPU {gpus} is unknown in a measured "
        "window (see the warnings above); energy.gross_j is null, and energy.partial_gross_j and "
        "energy.per_gpu[].partial_gross_j hold only the known deltas (too low)."
    ]


def _owning(cfg: ExperimentConfig, backend: Backend, **kw: Any) -> Outcome:
    """``execute`` with a backend it made: on any failure the model is released (``release()``, when
    the backend has one), not kept alive by the traceback until the caller drops the exception."""
    try:
        return execute(cfg, backend=backend, **kw)
    except BaseException:
        release = getattr(backend, "release", None)
        if callable(release):
            release()
        raise


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing; a folder with files is never touched (rmdir refuses)."""
    with contextlib.suppress(OSError):
        folder.rmdir()


def _await(imports: tracking.Prefetch | None, clock: Stopwatch) -> None:
    """Let the background MLflow import end before the GPU works, so it cannot slow a measured window."""
    if imports is None:
        return
    with clock.lap("import_wait"):
        done = imports.wait()
    if not done:
        log.warning("MLflow is still being imported after %g s; measuring anyway", tracking.PREFETCH_WAIT_S)


def _timings(clock: Stopwatch) -> Timings:
    """The laps so far as a ``Timings`` block; ``total_s``: the stopwatch's time until now."""
    return Timings(
        **{f"{name}_s": seconds for name, seconds in clock.laps.items()}, total_s=clock.elapsed_s()
    )


def _default_backend(cfg: ExperimentConfig) -> Backend:
    from llem_mlflow.backends import create_backend

    return create_backend(cfg)


def _probe_store(cfg: ExperimentConfig) -> str | None:
    """None when the store a run would log to answers quickly, else why not (one line)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        return None  # the caller's own run: its store is the caller's business
    from llem_mlflow.tracking import client as tracking
    from llem_mlflow.tracking import store_probe

    return store_probe.probe_store(tracking.target_tracking_uri(cfg.tracking_uri))


def _resolve(
    cfg: ExperimentConfig, loaded: LoadedModel, plan: preflight.Plan, attention: str | None = None
) -> identity.ResolvedSettings:
    return identity.resolve(
        cfg,
        weights=loaded.weights,
        precision=loaded.precision,
        device=loaded.device,
        revision=loaded.revision,
        dataset=plan.dataset,
        tokenizer=plan.tokenizer,
        gpus=len(loaded.cuda_devices),
        attention=attention or loaded.attention,
    )


def _no_gpu(loaded: LoadedModel) -> GpuSet:
    msg = (
        f"energy not measured: the model runs on {loaded.device}, not an NVIDIA GPU (energy fields are null)"
    )
    return GpuSet(devices=[], driver_version=None, warning=msg)


def _nvml_gpus(cuda_ids: Sequence[CudaDeviceId], nvml: Any = None) -> GpuSet:
    """The NVML devices of ``cuda_ids``; NVML is shut down on every path (``nvml``: a fake in tests)."""
    from llem_mlflow.measure.device import try_open_session

    session, reason = try_open_session(nvml)
    if session is None:
        return GpuSet(devices=[], driver_version=None, warning=f"energy not measured: {reason}")
    try:
        devices = session.devices_for(list(cuda_ids))
    except DeviceError as exc:
        driver = session.driver_version()
        session.close()
        return GpuSet(devices=[], driver_version=driver, warning=f"energy not measured: {exc}")
    return GpuSet(devices=devices, driver_version=session.driver_version(), close=session.close)


def _energy(
    m: measure.Measurement, infos: list[GpuInfo]
) -> tuple[EnergyBreakdown | None, list[EnergyBreakdown], list[str]]:
    """(all cycles together, each cycle, warnings); nothing without GPUs."""
    if not infos:
        return None, [], []
    parts = [energy.build_breakdown(c.window, m.idle, m.trace, infos) for c in m.cycles]
    total = energy.sum_breakdowns(parts)
    shortest = min((c.window for c in m.cycles), key=lambda w: w.duration_s)
    return total, parts, energy.energy_warnings(total, shortest)


def _cycle_stats(
    cfg: ExperimentConfig, m: measure.Measurement, parts: list[EnergyBreakdown]
) -> tuple[CycleStats, list[str]]:
    """Per-cycle records and their intervals (rules in ``stats``), with warnings on what they rest on.

    A cycle whose energy is unknown is in no energy interval; durations and tokens/s, gross energy and
    J/token are positive (log-scale bounds), net figures linear.
    """
    records = [_cycle_record(c, parts[c.index] if parts else None) for c in m.cycles]
    whole = [r for r in records if r.partial is None] or records  # a cut cycle is in no interval

    def interval(name: str, positive: bool) -> Interval | None:
        return stats.summarize_known([getattr(r, name) for r in whole], positive=positive)

    result = CycleStats(
        n=len(records),
        cooldown_s=cfg.cooldown_s,
        order="cycle 0 in dataset order; cycle k > 0 shuffled with random.Random(seed * 1000003 + k)",
        records=records,
        duration_s_ci95=stats.summarize([r.duration_s for r in whole], positive=True),
        output_tokens_per_s_ci95=stats.summarize([r.output_tokens_per_s for r in whole], positive=True),
        gross_j_ci95=interval("gross_j", True),
        net_j_ci95=interval("net_j", False),
        energy_per_output_token_j_ci95=interval("energy_per_output_token_j", True),
        net_energy_per_output_token_j_ci95=interval("net_energy_per_output_token_j", False),
    )
    return result, _interval_warnings(whole)


def _interval_warnings(records: list[CycleRecord]) -> list[str]:
    """Why intervals have no bounds (too few cycles), and how many cycles the energy intervals rest on."""
    n = len(records)
    out = []
    if 2 <= n < stats.MIN_INTERVAL_N:
        out.append(
            f"No 95 % intervals across cycles: {stats.no_interval_reason(n)}. The per-cycle values, "
            f"std and CV are reported; run cycles: {stats.MIN_INTERVAL_N} or more for intervals."
        )
    unknown = [r.index for r in records if r.unknown_gpus]
    kept = n - len(unknown)
    if unknown and n >= 2 and not kept:
        out.append("No energy intervals across cycles: the energy of every cycle is unknown.")
    elif unknown and n >= 2:
        left = ", ".join(f"{i + 1}/{n}" for i in unknown)
        bounds = "" if kept >= stats.MIN_INTERVAL_N else f"; {kept} cycle(s) are too few for 95 % bounds"
        out.append(
            f"Energy intervals across cycles rest on {kept} of {n} cycles: cycle {left} left out (a GPU's "
            f"counter delta is unknown, so that cycle's energy figures are null){bounds}."
        )
    return out


def _cycle_record(cycle: measure.Cycle, part: EnergyBreakdown | None) -> CycleRecord:
    """One cycle's figures; its energy figures are null without a GPU or when a GPU's delta is unknown."""
    out_tok = sum(s.output_tokens for s in cycle.stats)
    seconds = cycle.window.duration_s
    known = part if part is not None and not cycle.window.unknown else None
    gross = known.gross_j if known else None
    net = known.net_j if known else None
    return CycleRecord(
        index=cycle.index,
        start_s=cycle.window.start_s,
        end_s=cycle.window.end_s,
        duration_s=seconds,
        output_tokens=out_tok,
        output_tokens_per_s=out_tok / seconds if seconds > 0 else 0.0,
        gross_j=gross,
        net_j=net,
        edge_uncertainty_j=known.edge_uncertainty_j if known else None,
        energy_per_output_token_j=gross / out_tok if gross is not None and out_tok else None,
        net_energy_per_output_token_j=net / out_tok if net is not None and out_tok else None,
        unknown_gpus=sorted(cycle.window.unknown) if part is not None else [],
        partial=_partial_record(cycle.cut),
    )


def _partial_record(cut: measure.Cut | None) -> PartialCycle | None:
    if cut is None:
        return None
    return PartialCycle(completed_batches=cut.completed, batches=cut.batches, abandoned_s=cut.abandoned_s)


def _build_result(c: _Context, m: measure.Measurement, backend: Backend) -> ExperimentResult:
    infos = [d.info for d in c.gpu_set.devices]
    breakdown, parts, energy_warnings = _energy(m, infos)
    in_tok = sum(s.input_tokens for s in m.stats)
    out_tok = sum(s.output_tokens for s in m.stats)
    seconds = m.seconds
    gross, incomplete = _gross(m, breakdown)
    cycles, interval_warnings = _cycle_stats(c.cfg, m, parts)
    energy_warnings += incomplete + interval_warnings
    for w in [*m.warnings, *energy_warnings]:  # the backend already logged its own warnings
        log.warning(w)
    unc, flags = _assess(c, m, infos, breakdown, out_tok)
    prefill = _prefill_isolated(m, infos, breakdown)
    for flag in flags:
        log.warning(flag.message)
    warnings = [*c.plan.warnings, *c.loaded.warnings, *m.warnings, *energy_warnings]
    warnings += [f.message for f in flags]
    windows = {"measure": Window(start_s=m.span[0], end_s=m.span[1])}
    if m.idle is not None:
        windows["idle"] = Window(start_s=m.idle.start_s, end_s=m.idle.end_s)
    if m.idle_after is not None:
        windows["idle_after"] = Window(start_s=m.idle_after[0], end_s=m.idle_after[1])
    if m.prefill is not None:
        windows["prefill_isolated"] = Window(start_s=m.prefill.window.start_s, end_s=m.prefill.window.end_s)
    return ExperimentResult(
        experiment_id=c.experiment_id,
        measurement_config_hash=c.resolved.measurement_hash(),
        llem_version=__version__,
        config=c.cfg,
        resolved=c.resolved,
        model=c.cfg.model,
        backend=c.cfg.backend,
        weights=c.resolved.weights,
        precision=c.resolved.precision,
        device=c.resolved.device,
        input_tokens=in_tok,
        output_tokens=out_tok,
        total_tokens=in_tok + out_tok,
        total_energy_j=gross,
        total_inference_time_sec=seconds,
        avg_tokens_per_second=out_tok / seconds if seconds > 0 else 0.0,
        avg_energy_per_token_j=gross / out_tok if gross is not None and out_tok else None,
        total_flops=flops.estimate_generation_flops(c.loaded.shape, m.stats),
        flops_method=flops.FLOPS_METHOD,
        energy_source="nvml" if breakdown else "none",
        energy=breakdown,
        model_load_time_sec=c.loaded.load_time_s,
        warnings=warnings,
        start_time=c.start,
        end_time=datetime.now(timezone.utc),
        windows=windows,
        cycles=cycles,
        warmup=m.warmup,
        compute=_compute(c, m, infos, gross),
        latency=latency.summarize_latency(m.stats),
        phase_energy=_phase_energy(m, infos, gross),
        prefill_isolated=prefill,
        steady_state=_steady_state(m, bool(infos)),
        idle_settle=m.idle_settle,
        measurement_methodology=c.cfg.measurement_methodology,
        uncertainty=unc,
        quality_flags={f.name: f.message for f in flags},
        cpu_energy=m.cpu_energy,
        carbon_g=_carbon(c.cfg, gross, m.cpu_energy),
        environment_snapshot=environment.snapshot(infos, c.gpu_set.driver_version, backend.versions()),
        timeseries=artifacts.TRACE_FILE,
    )


def _assess(
    c: _Context, m: measure.Measurement, infos: list[GpuInfo], breakdown: EnergyBreakdown | None, out_tok: int
) -> tuple[Uncertainty | None, list[quality.QualityFlag]]:
    """The uncertainty block and the quality flags (none without GPUs: nothing to judge)."""
    if breakdown is None:
        return None, []
    gpus = [g.cuda_index for g in infos]
    idle_span = (m.idle.start_s, m.idle.end_s) if m.idle is not None else None
    unc = assess.uncertainty(breakdown, m.trace, idle_span, m.seconds, c.cfg.gain_uncertainty_pct)
    unc = unc.model_copy(
        update={
            "idle_before_w": assess.median_power_w(m.trace, gpus, idle_span),
            "idle_after_w": assess.median_power_w(m.trace, gpus, m.idle_after),
        }
    )
    windows = [(x.window.start_s, x.window.end_s) for x in m.cycles]
    inputs = assess.quality_inputs(
        breakdown=breakdown,
        unc=unc,
        trace=m.trace,
        infos=infos,
        windows=windows,
        idle_before_w=unc.idle_before_w,
        idle_after_w=unc.idle_after_w,
        output_tokens=out_tok,
    )
    inputs = replace(inputs, steady_state_requested=c.cfg.measurement_methodology == "steady_state")
    return unc, assess.flags(inputs, windows)


def _phase_energy(m: measure.Measurement, infos: list[GpuInfo], gross: float | None) -> PhaseEnergy | None:
    spans = phases.batch_spans([t for c in m.cycles for t in c.starts_s], m.stats)
    if gross is None or spans is None:
        return None
    windows = [(c.window.start_s, c.window.end_s) for c in m.cycles]
    split = phases.split_energy(gross, m.trace, [g.cuda_index for g in infos], windows, spans)
    if split is None:
        return None
    return PhaseEnergy(**vars(split), method=phases.METHOD)


def _prefill_isolated(
    m: measure.Measurement, infos: list[GpuInfo], main: EnergyBreakdown | None
) -> IsolatedPrefill | None:
    """The isolated-prefill window's figures; net uses the same idle baseline as the cycles."""
    p = m.prefill
    if p is None:
        return None
    part = energy.build_breakdown(p.window, m.idle, m.trace, infos) if main is not None else None
    gross, net = (part.gross_j, part.net_j) if part else (None, None)
    tokens = p.input_tokens_per_pass

    def per(value: float | None, by: float) -> float | None:
        return None if value is None or not by else value / by

    return IsolatedPrefill(
        method=(
            "isolated: whole passes of generate(max_new_tokens=1) over every measured batch in one "
            f"counter window of at least {measure.PREFILL_MIN_S:g} s, after one unmeasured pass; "
            "per pass = window energy / passes"
        ),
        passes=p.passes,
        batches_per_pass=p.batches_per_pass,
        input_tokens_per_pass=tokens,
        duration_s=p.window.duration_s,
        per_pass_s=p.window.duration_s / p.passes,
        gross_j=gross,
        net_j=net,
        edge_uncertainty_j=part.edge_uncertainty_j if part else None,
        per_pass_j=per(gross, p.passes),
        net_per_pass_j=per(net, p.passes),
        per_input_token_j=per(per(gross, p.passes), tokens),
        net_per_input_token_j=per(per(net, p.passes), tokens),
    )


def _steady_state(m: measure.Measurement, with_energy: bool) -> SteadyState | None:
    """What steady state trimmed from each cycle and what its in-window counter reads cost (None with
    the ``total`` methodology, and when an interrupt left the cycles untrimmed)."""
    ramps = [c.ramp for c in m.cycles]
    if any(r is None for r in ramps):
        return None
    done = [(c, r) for c, r in zip(m.cycles, ramps, strict=True) if r is not None]
    return SteadyState(
        rule=steady.RULE,
        trimmed_batches=[r.batches for _, r in done],
        ramp_s=[c.window.start_s - r.full.start_s for c, r in done],
        full_window_s=[r.full.duration_s for _, r in done],
        full_window_gross_j=[None if r.full.unknown else sum(r.full.energy_j.values()) for _, r in done]
        if with_energy
        else None,
        batch_power_w=[r.batch_power_w for _, r in done],
        in_window_reads=[len(c.read_s) for c, _ in done],
        in_window_read_s=[sum(c.read_s) for c, _ in done],
        in_window_read_pct=[_pct(sum(c.read_s), r.full.duration_s) for c, r in done],
    )


def _pct(part: float, whole: float) -> float:
    return part / whole * 100 if whole > 0 else 0.0


def _compute(
    c: _Context, m: measure.Measurement, infos: list[GpuInfo], gross: float | None
) -> ComputeFigures:
    phases = flops.estimate_phase_flops(c.loaded.shape, m.stats)
    peak = peaks.peak_flops(infos[0].name, c.resolved.precision) if infos else None
    return ComputeFigures(
        prefill_flops=phases.prefill,
        decode_flops=phases.decode,
        peak_flops_per_s=peak,
        mfu=flops.mfu(phases.total, m.seconds, peak, gpus=max(len(infos), 1)),
        energy_per_tflop_j=flops.joules_per_tflop(gross, phases.total),
    )


def _carbon(cfg: ExperimentConfig, gross: float | None, cpu: CpuEnergy | None) -> float | None:
    if cfg.carbon_intensity_g_per_kwh is None or gross is None:
        return None
    cpu_j = sum(v for v in (cpu.package_j, cpu.dram_j) if v is not None) if cpu else 0.0
    return carbon.carbon_g(gross + cpu_j, cfg.carbon_intensity_g_per_kwh, cfg.pue)


def _write_power_png(folder: Path, result: ExperimentResult, m: measure.Measurement) -> None:
    """power.png beside result.json (``plots``); a plotting failure only warns, never costs the run."""
    from llem_mlflow.results import plots

    try:
        plots.write_power_png(folder, result, m.trace)
    except Exception as exc:  # matplotlib missing or failing must not lose a measurement
        log.warning("power.png not written: %s", exc)


def _experiment_id(start: datetime, config_hash: str) -> str:
    return f"{start.strftime('%Y%m%dT%H%M%SZ')}-{config_hash[:8]}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class _Logging:
    """How to log: ``reprobe`` the store (it was down at the start); nest under ``child_of``'s parent.

    ``mlflow_run``: the run ``mlflow run`` made for this process (``MLFLOW_RUN_ID`` when this was made).
    """

    reprobe: preflight.StoreProbe | None
    child_of: tracking.ChildOf | None
    mlflow_run: str | None = field(default_factory=lambda: os.environ.get("MLFLOW_RUN_ID"))


@dataclass(frozen=True)
class _Written:
    """The result as written and where its files are: the result folder, else where ``_rescue`` put
    them (``problem``: why the result folder could not hold them), else nowhere (``on_disk`` False)."""

    result: ExperimentResult
    folder: Path
    problem: str | None = None
    on_disk: bool = True


class _Cut(Exception):  # noqa: N818 - it names what happened
    """A signal cut MLflow logging short; the message says where the result is and the way back."""

    def __init__(self, message: str, outcome: Outcome) -> None:
        super().__init__(message)
        self.outcome = outcome


def _write(
    result: ExperimentResult, m: measure.Measurement, folder: Path, show: Progress, clock: Stopwatch
) -> _Written:
    """Write the result files into ``folder``; when it cannot hold them (a full disk, a file size
    limit), into the first other place that can (``_rescue``), so the disk never costs the measurement."""
    try:
        return _Written(_write_files(result, m, folder, show, clock), folder)
    except TrackingError as exc:
        problem = str(exc)
    log.warning("%s; writing the result elsewhere", problem)
    return _rescue(result, m, folder, problem, show, clock)


def _write_files(
    result: ExperimentResult, m: measure.Measurement, folder: Path, show: Progress, clock: Stopwatch
) -> ExperimentResult:
    """Write timeseries.parquet, result.json and power.png; the result as written.

    result.json gets the timings up to its own write: ``write_s`` is the trace file's, no ``log_s``.
    """
    windows = {name: (w.start_s, w.end_s) for name, w in result.windows.items()}
    with clock.lap("write"):
        trace_path = artifacts.write_trace_parquet(m.trace, folder, windows)
    result = result.model_copy(update={"timings": _timings(clock)})
    with clock.lap("write"):
        json_path = artifacts.write_result_json(result, folder)
        _write_power_png(folder, result, m)
    show.stage(f"wrote {json_path} and {trace_path.name}")
    return result


def _rescue(
    result: ExperimentResult,
    m: measure.Measurement,
    folder: Path,
    problem: str,
    show: Progress,
    clock: Stopwatch,
) -> _Written:
    """Write the files into a new private folder of the first of ``rescue_roots()`` that holds them;
    when none does, the result stays in memory (``on_disk`` False: it is logged from memory)."""
    _remove_if_empty(folder)
    for root in rescue_roots():
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
            place = Path(tempfile.mkdtemp(prefix=f"llem-{result.experiment_id}-", dir=root))
        except OSError:
            continue
        try:
            written = _write_files(result, m, place, show, clock)
        except TrackingError:
            shutil.rmtree(place, ignore_errors=True)
            continue
        return _Written(written, place, f"{problem}; the result files were written to {place} instead")
    unwritten = result.model_copy(update={"timings": _timings(clock)})
    where = ", ".join(str(root) for root in rescue_roots())
    return _Written(unwritten, folder, f"{problem}; nor could they be written in {where}", on_disk=False)


def rescue_roots() -> list[Path]:
    """Where result files go when the result folder cannot hold them: the temp folder, then the spool."""
    return [Path(tempfile.gettempdir()), spool.spool_dir()]


def _stop_unlogged(cfg: ExperimentConfig, w: _Written, how: _Logging, signal: str) -> NoReturn:
    """A signal came while the result was derived or written: stop (exit 130) without logging; the
    result is spooled for ``llem-mlflow sync`` (with ``mlflow: false``: only the files)."""
    done = f"interrupted ({signal}) while writing the result files: every cycle had completed; kept"
    outcome = Outcome(result=w.result, result_dir=w.folder, run_id=None)
    if not cfg.mlflow:
        _stop(f"{done} {_where(w, 'not logged: --no-mlflow')}", outcome)
    target = spool.target_now(cfg.tracking_uri, cfg.experiment_name, cfg.run_name, how.child_of)
    with interrupts.keeping():
        note = _spool_note(w, target, f"interrupted ({signal}) before logging")
    if how.mlflow_run:
        note = f"`mlflow run` marks its run {how.mlflow_run} FAILED once this process exits; {note}"
    message = f"{done} {_where(w, 'not logged to MLflow')}: {note}"
    _stop(message, replace(outcome, tracking_error=note))


def _spool_note(w: _Written, target: spool.Target, reason: str) -> str:
    """Spool the written result for ``llem-mlflow sync``; one line saying where it went and the way back."""
    if not w.on_disk:
        return "no file could be written, so nothing was spooled"
    try:
        entry = spool.spool_result(w.folder, w.result.experiment_id, target, reason)
    except TrackingError as exc:
        first = str(exc).splitlines()[0]
        return f"{first}; log it later with: llem-mlflow log {w.folder}"
    return f"spooled in {entry}; upload it with: llem-mlflow sync"


def _finish(
    cfg: ExperimentConfig,
    w: _Written,
    m: measure.Measurement,
    how: _Logging,
    show: Progress,
    clock: Stopwatch,
) -> Outcome:
    """Log the written result (``_publish``); a signal that cuts logging short stops the run (exit 130)."""
    try:
        outcome = _publish(cfg, w, m, how, show, clock)
    except _Cut as stop:
        where = _where(w, "logging was cut short")
        _stop(
            f"interrupted while logging to MLflow: every cycle had completed; kept {where}: {stop}",
            stop.outcome,
        )
    return replace(outcome, write_error=_write_error(w, outcome))


def _write_error(w: _Written, outcome: Outcome) -> str | None:
    """Why the result is not in its folder and what was kept where (None: it is)."""
    if w.problem is None:
        return None
    if w.on_disk:
        logged = f" and logged to MLflow run {outcome.run_id}" if outcome.run_id else ""
        return f"{w.problem}{logged}"
    if outcome.run_id:
        return (
            f"{w.problem}: MLflow run {outcome.run_id} holds the result, logged from memory (params, "
            "metrics, the power trace as metric history; result.json as an artifact if the temp folder "
            "had room)"
        )
    return f"{w.problem}: nothing could be kept on disk or in MLflow; the summary above is all that is left"


def _publish(
    cfg: ExperimentConfig,
    w: _Written,
    m: measure.Measurement,
    how: _Logging,
    show: Progress,
    clock: Stopwatch,
) -> Outcome:
    """Log the written files as ``how`` says (nothing with ``mlflow: false``)."""
    if not cfg.mlflow:
        return Outcome(result=w.result, result_dir=w.folder, run_id=None)
    show.stage("logging to MLflow")
    with clock.lap("log"):
        return _log(cfg, w, m, how)


def _log(cfg: ExperimentConfig, w: _Written, m: measure.Measurement, how: _Logging) -> Outcome:
    """Log ``w``; a failure spools it. A signal (first or repeated) cuts logging short: ``_cut``."""
    target = spool.target_now(cfg.tracking_uri, cfg.experiment_name, cfg.run_name, how.child_of)
    try:
        with interrupts.cutting():
            still_down = preflight.probe_now(cfg, how.reprobe) if how.reprobe is not None else None
            if still_down:
                raise TrackingError(still_down)
            run_id = _log_now(cfg, w, m, how)
    except TrackingError as exc:  # the files are written: spool them for `llem-mlflow sync`
        if w.on_disk:
            message = spool.keep(w.folder, w.result.experiment_id, target, str(exc))
        else:
            message = f"{exc}\nNo file could be written either: the summary above is all that is left."
        return Outcome(result=w.result, result_dir=w.folder, run_id=None, tracking_error=message)
    except KeyboardInterrupt as stop:
        raise _cut(w, target, stop, how) from None
    return Outcome(result=w.result, result_dir=w.folder, run_id=run_id)


def _log_now(cfg: ExperimentConfig, w: _Written, m: measure.Measurement, how: _Logging) -> str:
    """Log the result folder, or, when no file could be written, the result from memory: both exactly once
    (``recording``'s protocol: under the result's lock, a run already holding it is kept, half-logged ones
    are retired)."""
    if w.on_disk:
        logged = recording.log_folder(
            w.folder, cfg.tracking_uri, cfg.experiment_name, cfg.run_name, (w.result, m.trace), how.child_of
        )
    else:
        logged = recording.log_from_memory(
            w.result, m.trace, w.folder, cfg.tracking_uri, cfg.experiment_name, cfg.run_name, how.child_of
        )
    return logged.run_id


def _cut(w: _Written, target: spool.Target, stop: KeyboardInterrupt, how: _Logging) -> _Cut:
    """Logging was cut short: spool the result first (a further signal waits for that), then end the
    half-logged run KILLED (a further signal exits at once; ``sync`` then retires the run)."""
    run_id = getattr(stop, "run_id", None)  # tracking.LoggingCut: the run it had made or resumed
    with contextlib.ExitStack() as stack:
        with interrupts.keeping():
            note = _spool_note(w, target, "MLflow logging was interrupted")
            stack.enter_context(interrupts.exit_line(_left_running(run_id, how, note)))
        if run_id is not None:  # a signal from here on exits at once with the line above
            ended = tracking.end_cut(stop)
            note = f"{_killed(run_id, how.mlflow_run) if ended else _left_running(run_id, how, '')}; {note}"
    return _Cut(note, Outcome(result=w.result, result_dir=w.folder, run_id=None, tracking_error=note))


def _left_running(run_id: str | None, how: _Logging, note: str) -> str:
    """What becomes of a half-logged run left RUNNING, then ``note`` (where the result is)."""
    if run_id is None:
        return note
    if run_id == how.mlflow_run:
        run = f"`mlflow run` marks run {run_id} FAILED when this process exits (sync logs into it)"
    else:
        run = f"MLflow run {run_id} left RUNNING (`llem-mlflow sync` retires it)"
    return f"{run}; {note}" if note else run
