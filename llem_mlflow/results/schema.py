"""ExperimentResult (schema 2.0): the one source of truth for result.json and MLflow logging.

The model's fields are the schema; its parts live in ``records`` (and ``measure.records``) and are
re-exported here. ``mlflow_params``/``mlflow_tags``/``mlflow_metrics`` derive every MLflow view from
the model through ``naming``, so no other module keeps its own list of keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.figures.latency import LatencySummary
from llem_mlflow.measure.records import CpuEnergy as CpuEnergy
from llem_mlflow.measure.records import EnergyBreakdown as EnergyBreakdown
from llem_mlflow.measure.records import GpuEnergy as GpuEnergy
from llem_mlflow.measure.records import WarmupRecord as WarmupRecord
from llem_mlflow.measure.settle import IdleSettle
from llem_mlflow.results import naming
from llem_mlflow.results.identity import ResolvedSettings
from llem_mlflow.results.naming import mlflow_power_point as mlflow_power_point
from llem_mlflow.results.records import ComputeFigures as ComputeFigures
from llem_mlflow.results.records import CycleRecord as CycleRecord
from llem_mlflow.results.records import CycleStats as CycleStats
from llem_mlflow.results.records import EnvironmentSnapshot as EnvironmentSnapshot
from llem_mlflow.results.records import GpuSnapshot as GpuSnapshot
from llem_mlflow.results.records import IsolatedPrefill as IsolatedPrefill
from llem_mlflow.results.records import PartialCycle as PartialCycle
from llem_mlflow.results.records import PhaseEnergy as PhaseEnergy
from llem_mlflow.results.records import QualityFigure as QualityFigure
from llem_mlflow.results.records import SteadyState as SteadyState
from llem_mlflow.results.records import Timings as Timings
from llem_mlflow.results.records import Uncertainty as Uncertainty
from llem_mlflow.results.records import Window as Window
from llem_mlflow.results.serving import ServingFigures as ServingFigures

SCHEMA_VERSION: Literal["2.0"] = "2.0"


class ExperimentResult(BaseModel):
    """Everything one experiment measured, and how."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    schema_version: Literal["2.0"] = SCHEMA_VERSION
    experiment_id: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    measurement_config_hash: str = Field(pattern=r"^[0-9a-f]{16}$")
    measurement_methodology: Literal["total", "steady_state"] = "total"
    # "interrupted": Ctrl-C or SIGTERM ended the run early; every figure comes from the completed cycles.
    status: Literal["completed", "interrupted"] = "completed"
    llem_version: str
    config: ExperimentConfig  # as requested (may say "auto"), with the GPU defaults the run took
    # The GPU defaults the run took for fields it was not given (config_gpu), e.g. {"cycles": 5}; null: none.
    gpu_defaults: dict[str, Any] | None = None
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
    scenario: Literal["in_process", "server"] = "in_process"
    serving: ServingFigures | None = None  # the server scenario's server, load, requests and windows
    quality: QualityFigure | None = None  # `quality: perplexity` only

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
        """Every config field, then ``resolved.<field>`` for each resolved setting (``naming.params``)."""
        return naming.params(self.config, self.resolved)

    def mlflow_tags(self) -> dict[str, str]:
        """llem.* tags and the run description ``mlflow.note.content`` (``naming.tags``)."""
        return naming.tags(self)

    def description(self) -> str:
        """One Markdown paragraph for the MLflow run page: what ran, what it cost, how far to trust it."""
        cycles = self.cycles.n if self.cycles else 1
        plural = "s" if cycles != 1 else ""
        what = f"{self.weights} weights, {self.precision}, {self.device}"
        if self.serving is not None:
            what = f"served as {self.serving.served_model!r}, GPUs: {self.device}"
        parts = [
            f"**{self.model}** ({what}), "
            f"{self.config.n} prompts x {self.config.max_output_tokens} new tokens {self._load_words()}, "
            f"{cycles} cycle{plural} ({self.measurement_methodology}):",
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

    def _load_words(self) -> str:
        s = self.serving
        if s is None:
            return f"at batch {self.config.batch_size}"
        load = f"concurrency {s.concurrency}" if s.load == "closed" else f"{s.request_rate:g} requests/s"
        return f"as streamed requests to a {s.engine} server at {load}"

    def mlflow_metrics(self) -> dict[str, float]:
        """Summary metrics, each rounded by its rule (``naming.metrics``); energy ones only when measured."""
        return naming.metrics(self)

    def mlflow_cycle_history(self) -> dict[str, list[tuple[int, float, float]]]:
        """``cycles/<figure>`` metric histories: (step = cycle index, cycle end epoch s, rounded value)."""
        return naming.cycle_history(self.cycles)
