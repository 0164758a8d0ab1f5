"""The MLflow vocabulary of a result: every param, tag and metric name, and how each value is rounded.

Pure functions of a result's values, with no import of mlflow: the names are part of what a result
*is* (``sweep`` reads them back, tests pin them), not of how it is sent, so they live in ``results``
and ``tracking`` only ships what they give. ``schema.ExperimentResult.mlflow_params`` / ``mlflow_tags``
/ ``mlflow_metrics`` / ``mlflow_cycle_history`` call these. This module reads a result through
``NamedResult``, the fields it names, and imports ``records`` (the parts), never ``schema``, which
imports it: the arrows run one way, records <- naming <- schema.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal, Protocol

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.figures.latency import LatencySummary
from llem_mlflow.figures.stats import Interval
from llem_mlflow.measure.records import CpuEnergy, EnergyBreakdown, WarmupRecord
from llem_mlflow.measure.settle import IdleSettle
from llem_mlflow.results import rounding
from llem_mlflow.results.identity import ResolvedSettings
from llem_mlflow.results.naming_serving import serving_metrics, serving_tags
from llem_mlflow.results.records import (
    ComputeFigures,
    CycleStats,
    EnvironmentSnapshot,
    IsolatedPrefill,
    PhaseEnergy,
    QualityFigure,
    SteadyState,
    Timings,
    Uncertainty,
)
from llem_mlflow.results.serving import ServingFigures


class NamedResult(Protocol):
    """The fields of ``ExperimentResult`` that become MLflow tags and metrics (mypy checks it fits)."""

    # identity and provenance (tags)
    schema_version: Literal["2.0"]
    experiment_id: str
    measurement_config_hash: str
    status: Literal["completed", "interrupted"]
    llem_version: str
    resolved: ResolvedSettings | None
    weights: Literal["pretrained", "random"]
    precision: str
    device: str
    energy_source: Literal["nvml", "none"]
    environment_snapshot: EnvironmentSnapshot
    quality_flags: dict[str, str]
    gpu_defaults: dict[str, Any] | None
    # headline figures (metrics)
    input_tokens: int
    output_tokens: int
    total_tokens: int
    total_energy_j: float | None
    total_inference_time_sec: float
    avg_tokens_per_second: float
    avg_energy_per_token_j: float | None
    total_flops: float
    flops_method: str
    model_load_time_sec: float
    carbon_g: float | None
    # parts (metrics, where present)
    energy: EnergyBreakdown | None
    cycles: CycleStats | None
    warmup: WarmupRecord | None
    compute: ComputeFigures | None
    latency: LatencySummary | None
    phase_energy: PhaseEnergy | None
    prefill_isolated: IsolatedPrefill | None
    steady_state: SteadyState | None
    idle_settle: IdleSettle | None
    uncertainty: Uncertainty | None
    cpu_energy: CpuEnergy | None
    timings: Timings | None
    scenario: Literal["in_process", "server"]
    serving: ServingFigures | None
    quality: QualityFigure | None

    def description(self) -> str:
        """The run description (tag ``mlflow.note.content``)."""
        ...


# Rounding of logged metric values: ``rounding`` (each keeps the precision its source has).
_Rounded = rounding.Rounded
_energy_j, _power_w, _seconds = rounding.energy_j, rounding.power_w, rounding.seconds
_count, _ratio, _percent = rounding.count, rounding.ratio, rounding.percent


#: Per-cycle figures logged as ``cycles/<figure>`` histories, with their rounding.
_CYCLE_FIGURES: dict[str, Callable[[float], float]] = {
    "energy_per_output_token_j": _ratio,
    "net_energy_per_output_token_j": _ratio,
    "output_tokens_per_s": _ratio,
    "duration_s": _seconds,
    "gross_j": _energy_j,
    "net_j": _energy_j,
}


def mlflow_power_point(gpu: int, power_w: float) -> tuple[str, float]:
    """Metric key and rounded value of one power-trace sample: ``power/gpu{i}_w``, W to 1 mW."""
    return f"power/gpu{gpu}_w", _power_w(power_w)


def params(config: ExperimentConfig, resolved: ResolvedSettings | None) -> dict[str, str]:
    """Every config field, then ``resolved.<field>`` for each resolved setting (None omitted).

    Values are strings: booleans lower-case, dicts and lists compact JSON (see ``_param_str``).
    """
    out = _params_of(config.model_dump(mode="json"), prefix="")
    if resolved is not None:
        out.update(_params_of(resolved.model_dump(mode="json"), prefix="resolved."))
    return out


def tags(result: NamedResult) -> dict[str, str]:
    """llem.* tags (identity, provenance, environment) and the run description ``mlflow.note.content``."""
    env = result.environment_snapshot
    out: dict[str, str | None] = {
        "llem.config_hash": result.measurement_config_hash,
        "llem.hash_recipe": str(result.resolved.recipe) if result.resolved is not None else None,
        "llem.schema_version": result.schema_version,
        "llem.status": result.status,
        "llem.version": result.llem_version,
        "llem.experiment_id": result.experiment_id,
        "llem.energy_source": result.energy_source,
        "llem.weights": result.weights,
        "llem.precision": result.precision,
        "llem.device": result.device,
        "llem.gpu.name": env.gpus[0].name if env.gpus else "none",
        "llem.gpu.count": str(len(env.gpus)),
        "llem.gpu.uuids": ",".join(g.uuid for g in env.gpus) or None,
        "llem.env.driver": env.driver_version,
        "llem.env.cuda": env.cuda_runtime,
        "llem.env.torch": env.packages.get("torch"),
        "llem.env.transformers": env.packages.get("transformers"),
        "llem.env.python": env.python_version,
        "llem.git.commit": env.git_commit,
        "llem.gpu_defaults": _pairs(result.gpu_defaults),
        **{f"llem.quality.{name}": message[:500] for name, message in result.quality_flags.items()},
        "mlflow.note.content": result.description(),
        **serving_tags(result.scenario, result.serving),
    }
    return {k: v for k, v in out.items() if v is not None}


def flops_unknown() -> str:
    """``flops_method`` of a result whose FLOPs were not estimated (its ``compute/flops`` is not logged)."""
    return "none: the model's family is unknown to the FLOPs estimate"


def metrics(result: NamedResult) -> dict[str, float]:
    """Summary metrics, each rounded by its rule (above); energy ones only when energy was measured."""
    out: dict[str, _Rounded] = {
        "throughput/output_tokens_per_s": (result.avg_tokens_per_second, _ratio),
        "time/inference_s": (result.total_inference_time_sec, _seconds),
        "time/model_load_s": (result.model_load_time_sec, _seconds),
        "compute/flops": (None if result.flops_method == flops_unknown() else result.total_flops, _count),
        "tokens/input": (result.input_tokens, _count),
        "tokens/output": (result.output_tokens, _count),
        "tokens/total": (result.total_tokens, _count),
    }
    if result.energy is not None:
        out.update(_energy_metrics(result))
    if result.cycles is not None:
        out.update(_interval_metrics(result.cycles))
    out.update(_extra_metrics(result))
    if result.timings is not None:
        out.update(_timing_metrics(result.timings))
    if result.serving is not None:
        out.update(serving_metrics(result.serving))
    return {k: rule(float(v)) for k, (v, rule) in out.items() if v is not None}


def cycle_history(cycles: CycleStats | None) -> dict[str, list[tuple[int, float, float]]]:
    """``cycles/<figure>`` metric histories: (step = cycle index, cycle end epoch s, rounded value)."""
    if cycles is None or cycles.n < 2:
        return {}
    history: dict[str, list[tuple[int, float, float]]] = {}
    for figure, rule in _CYCLE_FIGURES.items():  # a cycle whose figure is unknown has no point
        points = [(r.index, r.end_s, getattr(r, figure)) for r in cycles.records]
        known = [(i, t, rule(float(v))) for i, t, v in points if v is not None]
        if known:
            history[f"cycles/{figure}"] = known
    return history


def _energy_metrics(result: NamedResult) -> dict[str, _Rounded]:
    energy = result.energy
    assert energy is not None  # noqa: S101 - guarded by caller
    per_gpu_gaps = [g.counter_vs_trace_pct for g in energy.per_gpu if g.counter_vs_trace_pct is not None]
    return {
        "energy/total_j": (result.total_energy_j, _energy_j),
        "energy/gross_j": (energy.gross_j, _energy_j),
        "energy/net_j": (energy.net_j, _energy_j),
        "energy/idle_w": (energy.idle_power_w, _power_w),
        "energy/per_output_token_j": (result.avg_energy_per_token_j, _ratio),
        "energy/net_per_output_token_j": (
            energy.net_j / result.output_tokens
            if energy.net_j is not None and result.output_tokens
            else None,
            _ratio,
        ),
        "energy/edge_uncertainty_j": (energy.edge_uncertainty_j, _energy_j),
        "quality/counter_vs_trace_pct": (max(per_gpu_gaps, key=abs) if per_gpu_gaps else None, _percent),
        **{f"energy/gpu{g.cuda_index}_j": (g.gross_j, _energy_j) for g in energy.per_gpu},
    }


def _extra_metrics(result: NamedResult) -> dict[str, _Rounded]:
    """Phase FLOPs and bytes, MFU, decode bandwidth utilization, J/TFLOP, CPU energy and carbon, if known."""
    c, cpu, u, lat = result.compute, result.cpu_energy, result.uncertainty, result.latency
    return {
        "latency/ttft_p50_s": (lat.ttft_p50_s if lat else None, _seconds),
        "latency/itl_p50_s": (lat.itl_p50_s if lat else None, _seconds),
        "latency/itl_p90_s": (lat.itl_p90_s if lat else None, _seconds),
        "latency/itl_p99_s": (lat.itl_p99_s if lat else None, _seconds),
        "time/prefill_s": (lat.prefill_s if lat else None, _seconds),
        "energy/prefill_j": (result.phase_energy.prefill_j if result.phase_energy else None, _energy_j),
        "energy/decode_j": (result.phase_energy.decode_j if result.phase_energy else None, _energy_j),
        "time/decode_s": (lat.decode_s if lat else None, _seconds),
        "energy/net_uncertainty_j": (u.net_j if u else None, _energy_j),
        "energy/gross_uncertainty_j": (u.gross_j if u else None, _energy_j),
        "energy/idle_before_w": (u.idle_before_w if u else None, _power_w),
        "energy/idle_after_w": (u.idle_after_w if u else None, _power_w),
        "compute/prefill_flops": (c.prefill_flops if c else None, _count),
        "compute/decode_flops": (c.decode_flops if c else None, _count),
        "compute/mfu": (c.mfu if c else None, _ratio),
        "compute/prefill_bytes": (c.prefill_bytes if c else None, _count),
        "compute/decode_bytes": (c.decode_bytes if c else None, _count),
        "compute/memory_bandwidth_util": (c.memory_bandwidth_util if c else None, _ratio),  # decode
        "energy/per_tflop_j": (c.energy_per_tflop_j if c else None, _ratio),
        "energy/cpu_package_j": (cpu.package_j if cpu else None, _energy_j),
        "energy/cpu_dram_j": (cpu.dram_j if cpu else None, _energy_j),
        "energy/carbon_g": (result.carbon_g, _ratio),
        "quality/perplexity": (result.quality.value if result.quality else None, _ratio),
        **_method_metrics(result),
    }


def _method_metrics(result: NamedResult) -> dict[str, _Rounded]:
    """Isolated prefill, steady-state trimming and idle settle, where they ran."""
    p, st, idle = result.prefill_isolated, result.steady_state, result.idle_settle
    return {
        "energy/prefill_isolated_per_pass_j": (p.per_pass_j if p else None, _energy_j),
        "energy/prefill_isolated_per_input_token_j": (p.per_input_token_j if p else None, _ratio),
        "energy/prefill_isolated_net_per_input_token_j": (p.net_per_input_token_j if p else None, _ratio),
        "time/prefill_isolated_per_pass_s": (p.per_pass_s if p else None, _seconds),
        "steady/trimmed_batches": (sum(st.trimmed_batches) if st else None, _count),
        "time/idle_settle_s": (idle.waited_s if idle else None, _seconds),
        "time/compile_s": (result.warmup.compile_s if result.warmup else None, _seconds),
        "workload/passes_per_cycle": (result.warmup.passes if result.warmup else None, _count),
    }


def _timing_metrics(timings: Timings) -> dict[str, _Rounded]:
    """``time/stage/<stage>_s`` for each stage that ran, and ``time/stage/total_s``."""
    values = {k: v for k, v in timings.model_dump().items() if v is not None}
    return {f"time/stage/{name}": (value, _seconds) for name, value in values.items()}


def _interval_metrics(cycles: CycleStats) -> dict[str, _Rounded]:
    """``<headline>_ci95_low/_high`` for each headline figure that has an interval (2+ cycles)."""
    pairs: dict[str, tuple[Interval | None, Callable[[float], float]]] = {
        "energy/per_output_token_j": (cycles.energy_per_output_token_j_ci95, _ratio),
        "energy/net_per_output_token_j": (cycles.net_energy_per_output_token_j_ci95, _ratio),
        "throughput/output_tokens_per_s": (cycles.output_tokens_per_s_ci95, _ratio),
        "time/cycle_s": (cycles.duration_s_ci95, _seconds),
    }
    return rounding.ci95_bounds(pairs)


def _pairs(values: dict[str, Any] | None) -> str | None:
    """``cycles=5,cache=static``: a mapping as one tag value (None: empty or missing)."""
    return ",".join(f"{k}={_param_str(v)}" for k, v in values.items()) if values else None


def _params_of(values: dict[str, Any], prefix: str) -> dict[str, str]:
    return {prefix + k: _param_str(v) for k, v in values.items() if v is not None}


def _param_str(value: Any) -> str:
    """A param value: booleans lower-case, dicts and lists compact JSON (sorted keys), else ``str``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)
