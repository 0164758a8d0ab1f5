"""ExperimentResult (schema 2.0): the one source of truth for result.json and MLflow logging.

``mlflow_params``/``mlflow_tags``/``mlflow_metrics`` derive every MLflow view from the model,
so no other module keeps its own list of keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.figures.latency import LatencySummary
from llem_mlflow.figures.stats import Interval
from llem_mlflow.measure.settle import IdleSettle
from llem_mlflow.results.identity import ResolvedSettings

SCHEMA_VERSION: Literal["2.0"] = "2.0"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class GpuSnapshot(_Model):
    """One GPU the model used, as NVML reports it."""

    cuda_index: int
    nvml_index: int
    name: str
    uuid: str
    pci_bus_id: str | None = None
    memory_total_b: int | None = None
    power_limit_w: float | None = None
    persistence_mode: bool | None = None
    compute_capability: str | None = None


class EnvironmentSnapshot(_Model):
    """Where the experiment ran. Never holds secrets (tokens, passwords, URI credentials)."""

    python_version: str
    platform: str
    cpu_model: str | None = None
    cpu_count: int | None = None
    ram_total_b: int | None = None
    packages: dict[str, str | None] = Field(
        default_factory=dict
    )  # torch, transformers, mlflow, llem-mlflow...
    cuda_runtime: str | None = None
    driver_version: str | None = None
    gpus: list[GpuSnapshot] = Field(default_factory=list)
    git_commit: str | None = None
    git_dirty: bool | None = None


class GpuEnergy(_Model):
    """Energy of one GPU over the measured window(s).

    ``gross_j`` is null when the GPU's counter delta is unknown in any window (``unknown_windows``);
    ``partial_gross_j`` then holds the sum over the windows where it is known (too low, for inspection).
    """

    cuda_index: int
    uuid: str
    gross_j: float | None
    partial_gross_j: float | None = None  # only when gross_j is null: the known windows' sum
    unknown_windows: int = Field(default=0, ge=0)  # windows whose counter delta of this GPU is unknown
    idle_power_w: float | None = None
    net_j: float | None = None
    trace_integral_j: float | None = None
    counter_vs_trace_pct: float | None = None  # (counter - trace) / counter * 100
    samples_in_window: int = 0

    @model_validator(mode="after")
    def _never_partial(self) -> GpuEnergy:
        _check_partial(self.gross_j, self.partial_gross_j, self.unknown_windows)
        return self


def _check_partial(gross_j: float | None, partial_j: float | None, unknown: int) -> None:
    """A gross with an unknown part is null, and only a null gross has a partial sum."""
    if unknown and gross_j is not None:
        raise ValueError(
            "gross_j must be null when a counter delta is unknown (partial_gross_j holds the rest)"
        )
    if gross_j is not None and partial_j is not None:
        raise ValueError("partial_gross_j is only set when gross_j is null")


class EnergyBreakdown(_Model):
    """Gross (counter delta), idle baseline and net energy, summed over the GPUs used.

    ``gross_j`` is null when any GPU's counter delta is unknown in a window (``unknown_gpu_windows``):
    a partial sum is never the total; ``partial_gross_j`` then holds the known part (too low).
    """

    gross_j: float | None
    partial_gross_j: float | None = None  # only when gross_j is null: the known GPU-windows' sum
    unknown_gpu_windows: int = Field(default=0, ge=0)  # (GPU, window) pairs whose delta is unknown
    idle_power_w: float | None = None  # sum over GPUs, measured with the model loaded
    idle_duration_s: float | None = None
    net_j: float | None = None  # gross - idle_power_w * window duration
    edge_uncertainty_j: float | None = None  # +- one counter update (~0.1 s) at each edge
    counter_update_s: float = 0.1
    per_gpu: list[GpuEnergy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _never_partial(self) -> EnergyBreakdown:
        _check_partial(self.gross_j, self.partial_gross_j, self.unknown_gpu_windows)
        return self


class Window(_Model):
    """A timed phase; timestamps are Unix epoch seconds."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        """Length of the window in seconds."""
        return self.end_s - self.start_s


class ComputeFigures(_Model):
    """FLOPs per phase and what they say about efficiency (see ``flops`` for the counting rules)."""

    prefill_flops: float = Field(ge=0)
    decode_flops: float = Field(ge=0)
    attention_convention: str = "causal half: L(L+1)/2 (query, key) pairs per prefill row; padding counted"
    peak_flops_per_s: float | None = None  # dense peak of the GPU model at the precision, per GPU
    mfu: float | None = None  # total FLOPs / (measured seconds x peak x GPUs), a fraction
    energy_per_tflop_j: float | None = None  # gross energy / (total FLOPs / 1e12)


class Uncertainty(_Model):
    """Bounds on the energy figures (all cycles together); see ``assess`` for the rules."""

    window_edges_j: float | None = None  # counter staleness at the measured windows' edges
    idle_edges_j: float | None = None  # the idle baseline's edge error, carried into net energy
    gain_pct: float = 5.0  # NVML sensor gain uncertainty, +- % of reading
    gross_j: float | None = None  # window edges + gain x gross
    net_j: float | None = None  # window edges + idle edges + gain x |net| (worst-case sum)
    counter_vs_trace_pct: float | None = None  # the largest per-GPU gap, a cross-check
    idle_before_w: float | None = None  # median trace power over the counter baseline
    idle_after_w: float | None = None  # median trace power over model-resident idle after the last cycle


class PhaseEnergy(_Model):
    """Gross energy split into prefill, decode and the rest of the window (see ``phases``)."""

    prefill_j: float
    decode_j: float
    other_j: float
    prefill_s: float
    decode_s: float
    method: str


class CpuEnergy(_Model):
    """CPU energy over the measured windows, from RAPL (package and DRAM), apart from GPU energy."""

    package_j: float | None = None
    dram_j: float | None = None
    source: str = "rapl"


class WarmupRecord(_Model):
    """What warm-up did: the measured batches themselves, one at a time, each timed after a sync."""

    batches: int = Field(ge=0)
    latencies_s: list[float]
    rule: str  # "fixed: N batches" or "settle: ..."
    settled: bool | None = None  # settle rule only: the CV fell below the threshold before the cap
    compile_batches: int = 0  # with compile: batches run first, one per batch size (compile and capture)
    compile_s: float | None = None  # their wall time, kept out of every window; null without compile


class SteadyState(_Model):
    """What ``measurement_methodology: steady_state`` left out of each cycle (see ``steady``)."""

    rule: str
    trimmed_batches: list[int]  # per cycle: leading batches left out as ramp
    ramp_s: list[float]  # per cycle: from the full window's start to the first steady batch
    full_window_s: list[float]  # per cycle: the whole window, ramp included
    full_window_gross_j: list[float | None] | None = None  # per cycle, counter; null: no GPU / unknown
    batch_power_w: list[list[float | None]]  # per cycle, per batch: mean trace power (the rule's input)
    # The cost of the batch-edge counter reads inside each cycle's window (sync + read of every GPU,
    # timed with time.perf_counter): their count, their seconds and their share of the whole window.
    # Backend latencies (TTFT, ITL) never include them; the window's time and energy do.
    in_window_reads: list[int] | None = None
    in_window_read_s: list[float] | None = None
    in_window_read_pct: list[float] | None = None


class IsolatedPrefill(_Model):
    """Prefill measured alone: passes of generate(max_new_tokens=1) over every batch, one counter window."""

    method: str
    passes: int = Field(ge=1)
    batches_per_pass: int = Field(ge=1)
    input_tokens_per_pass: int = Field(ge=0)
    duration_s: float = Field(ge=0)
    per_pass_s: float = Field(ge=0)
    gross_j: float | None = None
    net_j: float | None = None
    edge_uncertainty_j: float | None = None
    per_pass_j: float | None = None  # gross / passes
    net_per_pass_j: float | None = None
    per_input_token_j: float | None = None  # gross per pass / input tokens per pass
    net_per_input_token_j: float | None = None


class PartialCycle(_Model):
    """A cycle an interrupt cut short: its figures hold its completed batches only; no interval uses it.

    ``abandoned_s``: seconds of the batch the interrupt abandoned that are in this cycle's time and
    energy (its tokens are not); 0 when the window ends where that batch began (see ``measure.Cut``).
    """

    completed_batches: int = Field(ge=1)
    batches: int = Field(ge=1)  # the cycle's batches
    abandoned_s: float = Field(ge=0)


class CycleRecord(_Model):
    """One measured cycle (all ``n`` prompts once); energies are null without an NVIDIA GPU."""

    index: int = Field(ge=0)
    start_s: float
    end_s: float
    duration_s: float = Field(ge=0)
    output_tokens: int = Field(ge=0)
    output_tokens_per_s: float = Field(ge=0)
    gross_j: float | None = None  # null without a GPU, or when a GPU's counter delta is unknown
    net_j: float | None = None
    edge_uncertainty_j: float | None = None
    energy_per_output_token_j: float | None = None  # gross / output tokens
    net_energy_per_output_token_j: float | None = None  # net / output tokens
    unknown_gpus: list[int] = Field(default_factory=list)  # GPUs whose counter delta is unknown here
    partial: PartialCycle | None = None  # set when Ctrl-C or SIGTERM cut this cycle short


class CycleStats(_Model):
    """The measured window repeated ``n`` times in one process, with 95% intervals (Student t) per figure.

    An interval is null when it cannot exist (no GPU: no energy), never zero; its bounds are null below
    ``stats.MIN_INTERVAL_N`` cycles. Energy intervals leave out the cycles whose energy is unknown
    (``Interval.left_out``). Positive figures have log-scale bounds (``stats``).
    """

    n: int = Field(ge=1)
    cooldown_s: float = Field(ge=0)
    order: str  # how batches were ordered per cycle
    records: list[CycleRecord]
    duration_s_ci95: Interval
    output_tokens_per_s_ci95: Interval
    gross_j_ci95: Interval | None = None
    net_j_ci95: Interval | None = None
    energy_per_output_token_j_ci95: Interval | None = None
    net_energy_per_output_token_j_ci95: Interval | None = None


class Timings(_Model):
    """Wall time of each stage of the run, in seconds (``time.perf_counter``); null: the stage did not run.

    result.json is written before MLflow is called, so its copy holds what ended by then: ``write_s``
    is the trace file only and ``log_s`` is null. ``Outcome.timings`` and the CLI's ``stages`` line
    have both files in ``write_s``, ``log_s``, and ``total_s`` up to the end of logging.
    """

    startup_s: float | None = Field(default=None, ge=0)  # process start to run start (CLI on Linux only)
    checks_s: float | None = Field(default=None, ge=0)  # preflight: folder, dataset, model config, store
    load_s: float | None = Field(default=None, ge=0)  # loading the model (weights, CUDA context)
    import_wait_s: float | None = Field(default=None, ge=0)  # waiting for the MLflow import after load
    warmup_s: float | None = Field(default=None, ge=0)  # warm-up batches
    idle_settle_s: float | None = Field(default=None, ge=0)  # waiting for idle power to settle
    baseline_s: float | None = Field(default=None, ge=0)  # the idle baseline's counter window
    measure_s: float | None = Field(default=None, ge=0)  # every cycle, cool-downs included
    prefill_isolated_s: float | None = Field(default=None, ge=0)  # the isolated-prefill passes
    idle_after_s: float | None = Field(default=None, ge=0)  # model-resident idle after the cycles
    derive_s: float | None = Field(default=None, ge=0)  # figures, flags and environment snapshot
    write_s: float | None = Field(default=None, ge=0)  # result files (result.json's copy: the trace only)
    log_s: float | None = Field(default=None, ge=0)  # MLflow; null in result.json and when not logged
    total_s: float = Field(ge=0)  # run start to this block (result.json: just before its own write)

    def stages(self) -> dict[str, float]:
        """The stages that ran, in run order (``startup_s`` and ``total_s`` left out), name without ``_s``."""
        skip = ("startup_s", "total_s")
        return {k[:-2]: v for k, v in self.model_dump().items() if k not in skip and v is not None}


class ExperimentResult(_Model):
    """Everything one experiment measured, and how."""

    schema_version: Literal["2.0"] = SCHEMA_VERSION
    experiment_id: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    measurement_config_hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    measurement_methodology: Literal["total", "steady_state"] = "total"
    # "interrupted": Ctrl-C or SIGTERM ended the run early; every figure comes from the completed cycles.
    status: Literal["completed", "interrupted"] = "completed"
    llem_version: str
    config: ExperimentConfig  # as requested (may say "auto")
    # What was measured, every "auto" resolved; measurement_config_hash is computed from it alone.
    # Null only in results written before hash recipe 2 (llem-mlflow < 0.2), whose hash was over `config`.
    resolved: ResolvedSettings | None = None
    model: str
    backend: str
    weights: Literal["pretrained", "random"]
    precision: str
    device: str
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    total_energy_j: float | None = None
    total_inference_time_sec: float = Field(ge=0)
    avg_tokens_per_second: float = Field(ge=0)
    avg_energy_per_token_j: float | None = None
    total_flops: float = Field(ge=0)
    flops_method: str
    energy_source: Literal["nvml", "none"]
    energy: EnergyBreakdown | None = None
    model_load_time_sec: float = Field(ge=0)
    warnings: list[str] = Field(default_factory=list)
    start_time: datetime
    end_time: datetime
    windows: dict[str, Window] = Field(default_factory=dict)  # "idle", "measure" (first to last cycle)
    # Per-cycle figures and their intervals; top-level figures cover all cycles together (sums, and
    # ratios of sums). Null only in results written before cycles existed.
    cycles: CycleStats | None = None
    warmup: WarmupRecord | None = None
    compute: ComputeFigures | None = None
    latency: LatencySummary | None = None  # TTFT and inter-token latency from per-step timings
    phase_energy: PhaseEnergy | None = None  # null without energy or per-step timings
    prefill_isolated: IsolatedPrefill | None = None  # isolated_prefill runs only
    steady_state: SteadyState | None = None  # steady_state methodology only
    idle_settle: IdleSettle | None = None  # idle_settle_max_s > 0 only
    uncertainty: Uncertainty | None = None  # null without energy
    quality_flags: dict[str, str] = Field(default_factory=dict)  # flag name -> message (also in warnings)
    cpu_energy: CpuEnergy | None = None  # null where RAPL cannot be read (the reason is a warning)
    carbon_g: float | None = None  # (GPU gross + CPU) energy x PUE x configured grid intensity
    environment_snapshot: EnvironmentSnapshot
    timeseries: str | None = None  # file name of the Parquet trace, relative to result.json
    timings: Timings | None = None  # wall time per stage; null in results written before it existed

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentResult:
        if self.total_tokens != self.input_tokens + self.output_tokens:
            raise ValueError("total_tokens must equal input_tokens + output_tokens")
        if self.energy_source == "none" and self.total_energy_j is not None:
            raise ValueError("energy_source 'none' requires total_energy_j to be null")
        if self.resolved is not None and self.resolved.measurement_hash() != self.measurement_config_hash:
            raise ValueError("measurement_config_hash must be the hash of `resolved`")
        return self

    def mlflow_params(self) -> dict[str, str]:
        """Every config field, then ``resolved.<field>`` for each resolved setting (None omitted).

        Values are strings: booleans lower-case, dicts and lists compact JSON (see ``_param_str``).
        """
        params = _params_of(self.config.model_dump(mode="json"), prefix="")
        if self.resolved is not None:
            params.update(_params_of(self.resolved.model_dump(mode="json"), prefix="resolved."))
        return params

    def mlflow_tags(self) -> dict[str, str]:
        """llem.* tags (identity, provenance, environment) and the run description ``mlflow.note.content``."""
        env = self.environment_snapshot
        tags: dict[str, str | None] = {
            "llem.config_hash": self.measurement_config_hash,
            "llem.hash_recipe": str(self.resolved.recipe) if self.resolved is not None else None,
            "llem.schema_version": self.schema_version,
            "llem.status": self.status,
            "llem.version": self.llem_version,
            "llem.experiment_id": self.experiment_id,
            "llem.energy_source": self.energy_source,
            "llem.weights": self.weights,
            "llem.precision": self.precision,
            "llem.device": self.device,
            "llem.gpu.name": env.gpus[0].name if env.gpus else "none",
            "llem.gpu.count": str(len(env.gpus)),
            "llem.gpu.uuids": ",".join(g.uuid for g in env.gpus) or None,
            "llem.env.driver": env.driver_version,
            "llem.env.cuda": env.cuda_runtime,
            "llem.env.torch": env.packages.get("torch"),
            "llem.env.transformers": env.packages.get("transformers"),
            "llem.env.python": env.python_version,
            "llem.git.commit": env.git_commit,
            **{f"llem.quality.{name}": message[:500] for name, message in self.quality_flags.items()},
            "mlflow.note.content": self.description(),
        }
        return {k: v for k, v in tags.items() if v is not None}

    def description(self) -> str:
        """One Markdown paragraph for the MLflow run page: what ran, what it cost, how far to trust it."""
        cycles = self.cycles.n if self.cycles else 1
        plural = "s" if cycles != 1 else ""
        parts = [
            f"**{self.model}** ({self.weights} weights, {self.precision}, {self.device}), "
            f"{self.config.n} prompts x {self.config.max_output_tokens} new tokens at batch "
            f"{self.config.batch_size}, {cycles} cycle{plural} ({self.measurement_methodology}):",
            f"{self.avg_tokens_per_second:,.1f} output tok/s",
        ]
        if self.avg_energy_per_token_j is not None and self.total_energy_j is not None:
            gpus = len(self.energy.per_gpu) if self.energy else 0
            parts.append(
                f"{self.avg_energy_per_token_j:.4g} J per output token ({self.total_energy_j:,.0f} J on "
                f"{gpus} GPU{'s' if gpus != 1 else ''}, NVML energy counter)"
            )
        else:
            parts.append("energy not measured (no NVIDIA GPU)")
        flags = ", ".join(self.quality_flags) or "none"
        return (
            " ".join([parts[0], "; ".join(parts[1:]) + "."])
            + f" Quality flags: {flags}. Hash "
            + (f"`{self.measurement_config_hash}`; details in result.json.")
        )

    def mlflow_metrics(self) -> dict[str, float]:
        """Summary metrics, each rounded by its rule (below); energy ones only when energy was measured."""
        metrics: dict[str, _Rounded] = {
            "throughput/output_tokens_per_s": (self.avg_tokens_per_second, _ratio),
            "time/inference_s": (self.total_inference_time_sec, _seconds),
            "time/model_load_s": (self.model_load_time_sec, _seconds),
            "compute/flops": (self.total_flops, _count),
            "tokens/input": (self.input_tokens, _count),
            "tokens/output": (self.output_tokens, _count),
            "tokens/total": (self.total_tokens, _count),
        }
        if self.energy is not None:
            metrics.update(_energy_metrics(self))
        if self.cycles is not None:
            metrics.update(_interval_metrics(self.cycles))
        metrics.update(_extra_metrics(self))
        if self.timings is not None:
            metrics.update(_timing_metrics(self.timings))
        return {k: rule(float(v)) for k, (v, rule) in metrics.items() if v is not None}

    def mlflow_cycle_history(self) -> dict[str, list[tuple[int, float, float]]]:
        """``cycles/<figure>`` metric histories: (step = cycle index, cycle end epoch s, rounded value)."""
        if self.cycles is None or self.cycles.n < 2:
            return {}
        history: dict[str, list[tuple[int, float, float]]] = {}
        for figure, rule in _CYCLE_FIGURES.items():  # a cycle whose figure is unknown has no point
            points = [(r.index, r.end_s, getattr(r, figure)) for r in self.cycles.records]
            known = [(i, t, rule(float(v))) for i, t, v in points if v is not None]
            if known:
                history[f"cycles/{figure}"] = known
        return history


# Rounding of logged metric values: each keeps the precision its source has, no float noise
# (266.0649999999987 is logged as 266.065). A metric is (value, rounding rule).
_Rounded = tuple[float | None, Callable[[float], float]]


def _energy_j(value: float) -> float:
    """Energy in J to 1 mJ (3 decimals): the NVML total-energy counter counts millijoules."""
    return round(value, 3)


def _power_w(value: float) -> float:
    """Power in W to 1 mW (3 decimals): NVML reports power in milliwatts."""
    return round(value, 3)


def _seconds(value: float) -> float:
    """Durations in s to 1 us (6 decimals)."""
    return round(value, 6)


def _count(value: float) -> float:
    """Tokens and FLOPs: integral."""
    return float(round(value))


def _ratio(value: float) -> float:
    """Derived ratios (J/token, tokens/s): 6 significant digits."""
    return float(f"{value:.6g}")


def _percent(value: float) -> float:
    """Percentages to 4 decimals."""
    return round(value, 4)


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


def _energy_metrics(result: ExperimentResult) -> dict[str, _Rounded]:
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


def _extra_metrics(result: ExperimentResult) -> dict[str, _Rounded]:
    """Phase FLOPs, MFU, J/TFLOP, CPU energy and carbon, where known."""
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
        "energy/per_tflop_j": (c.energy_per_tflop_j if c else None, _ratio),
        "energy/cpu_package_j": (cpu.package_j if cpu else None, _energy_j),
        "energy/cpu_dram_j": (cpu.dram_j if cpu else None, _energy_j),
        "energy/carbon_g": (result.carbon_g, _ratio),
        **_method_metrics(result),
    }


def _method_metrics(result: ExperimentResult) -> dict[str, _Rounded]:
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
    out: dict[str, _Rounded] = {}
    for key, (interval, rule) in pairs.items():
        if interval is not None and interval.ci95_low is not None:
            out[f"{key}_ci95_low"] = (interval.ci95_low, rule)
            out[f"{key}_ci95_high"] = (interval.ci95_high, rule)
    return out


def _params_of(values: dict[str, Any], prefix: str) -> dict[str, str]:
    return {prefix + k: _param_str(v) for k, v in values.items() if v is not None}


def _param_str(value: Any) -> str:
    """A param value: booleans lower-case, dicts and lists compact JSON (sorted keys), else ``str``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)
