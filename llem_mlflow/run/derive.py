"""The figures of a run and its result: a ``Measurement`` (and what was decided before measuring,
``_Context``) into a validated ``ExperimentResult``.

Energy per cycle and in all (``energy``), the total only when every GPU's delta is known (``_gross``),
per-cycle records and their 95 % intervals (``stats``), uncertainty and quality flags (``assess``),
FLOPs and MFU, latency, the phase split, the isolated prefill, steady state, carbon, the environment.
Pure apart from logging each warning once. Names with a leading underscore are the run package's own
(used by its modules), not public API.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from llem_mlflow._version import __version__
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.config_gpu import held_gpu_defaults
from llem_mlflow.figures import carbon, flops, latency, peaks, phases, quality, roofline, stats
from llem_mlflow.figures.stats import Interval
from llem_mlflow.measure import energy, prefill, steady
from llem_mlflow.measure import stages as measure
from llem_mlflow.protocols import Backend, GpuInfo, LoadedModel
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
    Uncertainty,
    Window,
)
from llem_mlflow.run import preflight
from llem_mlflow.run.gpus import GpuSet

log = logging.getLogger(__name__)


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
    """The validated result of ``m`` under ``c``; the warnings not logged yet are logged here, once."""
    infos = [d.info for d in c.gpu_set.devices]
    breakdown, parts, energy_warnings = _energy(m, infos)
    in_tok, out_tok = sum(s.input_tokens for s in m.stats), sum(s.output_tokens for s in m.stats)
    seconds = m.seconds
    gross, incomplete = _gross(m, breakdown)
    cycles, interval_warnings = _cycle_stats(c.cfg, m, parts)
    unc, flags = _assess(c, m, infos, breakdown, out_tok)
    warnings = _log_warnings(c, m, [*energy_warnings, *incomplete, *interval_warnings], flags)
    result = ExperimentResult(
        experiment_id=c.experiment_id,
        measurement_config_hash=c.resolved.measurement_hash(),
        llem_version=__version__,
        config=c.cfg,
        gpu_defaults=held_gpu_defaults(c.cfg) or None,
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
        windows=_windows(m),
        cycles=cycles,
        warmup=m.warmup,
        compute=_compute(c, m, infos, gross),
        latency=latency.summarize_latency(m.stats),
        phase_energy=_phase_energy(m, infos, gross),
        prefill_isolated=_prefill_isolated(m, infos, breakdown),
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
    if m.served is None:
        return result
    from llem_mlflow.run.derive_serving import with_serving

    nets: list[float | None] = [p.net_j for p in parts] if parts else [None] * len(m.cycles)
    return with_serving(c.cfg, m, backend, result, nets, [g.cuda_index for g in infos])


def _log_warnings(
    c: _Context, m: measure.Measurement, derived: list[str], flags: list[quality.QualityFlag]
) -> list[str]:
    """Every warning of the run, in order; those of the measurement, the derived figures and the
    quality flags are logged here (the checks' and the backend's were logged as they came)."""
    for w in [*m.warnings, *derived, *(flag.message for flag in flags)]:
        log.warning(w)
    return [*c.plan.warnings, *c.loaded.warnings, *m.warnings, *derived, *(f.message for f in flags)]


def _windows(m: measure.Measurement) -> dict[str, Window]:
    """The measured span, and the idle and isolated-prefill windows when there were any."""
    windows = {"measure": Window(start_s=m.span[0], end_s=m.span[1])}
    if m.idle is not None:
        windows["idle"] = Window(start_s=m.idle.start_s, end_s=m.idle.end_s)
    if m.idle_after is not None:
        windows["idle_after"] = Window(start_s=m.idle_after[0], end_s=m.idle_after[1])
    if m.prefill is not None:
        windows["prefill_isolated"] = Window(start_s=m.prefill.window.start_s, end_s=m.prefill.window.end_s)
    return windows


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
            f"counter window of at least {prefill.PREFILL_MIN_S:g} s, after one unmeasured pass; "
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
    """FLOPs and MFU (the compute roof); bytes and decode's bandwidth utilization (the memory roof)."""
    shape, gpus = c.loaded.shape, max(len(infos), 1)
    phases = flops.estimate_phase_flops(shape, m.stats)
    peak = peaks.peak_flops(infos[0].name, c.resolved.precision) if infos else None
    e = roofline.element_bytes(c.resolved.precision)
    moved = roofline.estimate_phase_bytes(shape, m.stats, e) if e else None
    bandwidth = peaks.peak_memory_bandwidth(infos[0].name) if infos else None
    util = roofline.decode_bandwidth_util(shape, m.stats, e, bandwidth, gpus) if e else None
    return ComputeFigures(
        prefill_flops=phases.prefill,
        decode_flops=phases.decode,
        peak_flops_per_s=peak,
        mfu=flops.mfu(phases.total, m.seconds, peak, gpus=gpus),
        energy_per_tflop_j=flops.joules_per_tflop(gross, phases.total),
        prefill_bytes=moved.prefill if moved else None,
        decode_bytes=moved.decode if moved else None,
        bytes_method=roofline.BYTES_METHOD if moved else None,
        peak_memory_bytes_per_s=bandwidth,
        memory_bandwidth_util=util,
    )


def _carbon(cfg: ExperimentConfig, gross: float | None, cpu: CpuEnergy | None) -> float | None:
    if cfg.carbon_intensity_g_per_kwh is None or gross is None:
        return None
    cpu_j = sum(v for v in (cpu.package_j, cpu.dram_j) if v is not None) if cpu else 0.0
    return carbon.carbon_g(gross + cpu_j, cfg.carbon_intensity_g_per_kwh, cfg.pue)
