"""Raw measurement records: per-GPU and summed energy, CPU energy and the warm-up record.

They live here, below ``results``, so the measuring code can build them without importing the
result schema; ``results.schema`` re-exports them as parts of ``ExperimentResult``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


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
    passes: int = Field(default=1, ge=1)  # passes of the prompt set per measured cycle (min_window_s)
    # passes x batches per pass x the median of the settle rule's latencies; null without a warm-up batch
    est_window_s: float | None = None
    # warmup_power_settle_pct: each stretch's mean power (sum over the GPUs, energy counter), in order
    power_w: list[float] = Field(default_factory=list)
    power_settled: bool | None = None  # null: not asked, or no GPU; false: the cap or a failed read ended it
    power_s: float | None = None  # seconds the power settle ran; null when it did not
    # the last line fit over 5 stretches: |slope| x horizon as % of the last stretch's power (null before 5)
    power_drift_pct: float | None = None
    power_horizon_s: float | None = None  # the window the drift is projected over (min_window_s, else 20 s)
