"""Synthetic long traces and matching valid results for the logging and scaling benchmarks.

Not a benchmark itself. The result follows ``tests/conftest.py``'s ``build_result`` (gpt2, bf16, H200s)
but its windows span the whole trace: a 3 s idle baseline, then the measured window to the end. The trace
has one sample per GPU every ``interval_s``, with slow readings on every 5th tick as the sampler takes them.
"""

from __future__ import annotations

from datetime import datetime, timezone

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from llem_mlflow.results.identity import resolve
from llem_mlflow.results.schema import (
    EnergyBreakdown,
    EnvironmentSnapshot,
    ExperimentResult,
    GpuEnergy,
    GpuSnapshot,
    Window,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
IDLE_S = 3.0


def trace(ticks: int, gpus: int = 1, interval_s: float = 0.1, slow_every: int = 5) -> PowerTrace:
    """``ticks`` samples per GPU at ``interval_s``; idle power for the first 3 s, then busy."""
    samples = []
    for i in range(ticks):
        t = T0 + i * interval_s
        busy = t >= T0 + IDLE_S
        slow = i % slow_every == 0
        for gpu in range(gpus):
            samples.append(
                TraceSample(
                    timestamp_s=t + gpu * 0.001,
                    gpu=gpu,
                    power_w=(310.5 if busy else 72.25) + gpu + (i % 7) * 0.37,
                    temperature_c=41.0 + (i % 300) * 0.05 if slow else None,
                    sm_clock_mhz=(1980.0 if busy else 345.0) if slow else None,
                    utilization_pct=(97.0 if busy else 0.0) if slow else None,
                    memory_used_b=8_000_000_000 + i if slow else None,
                    throttle_reasons=0 if slow else None,
                    compute_processes=1 if slow else None,
                )
            )
    return PowerTrace(interval_s=interval_s, samples=samples)


def windows(ticks: int, interval_s: float = 0.1) -> dict[str, tuple[float, float]]:
    """The idle and measure windows of a trace of ``ticks`` ticks."""
    end = T0 + max(ticks - 1, 1) * interval_s
    return {"idle": (T0, T0 + IDLE_S), "measure": (T0 + IDLE_S, max(end, T0 + IDLE_S + interval_s))}


def _uuid(gpu: int) -> str:
    return f"GPU-{gpu:08d}-aaaa-bbbb-cccc-dddddddddddd"


def _energy(gpus: int, seconds: float) -> EnergyBreakdown:
    per_gpu = [
        GpuEnergy(
            cuda_index=i,
            uuid=_uuid(i),
            gross_j=312.0 * seconds,
            idle_power_w=72.5,
            net_j=(312.0 - 72.5) * seconds,
            trace_integral_j=311.0 * seconds,
            counter_vs_trace_pct=0.3,
            samples_in_window=int(seconds * 10),
        )
        for i in range(gpus)
    ]
    return EnergyBreakdown(
        gross_j=sum(g.gross_j for g in per_gpu),
        idle_power_w=72.5 * gpus,
        idle_duration_s=IDLE_S,
        net_j=sum(g.net_j or 0.0 for g in per_gpu),
        edge_uncertainty_j=28.0 * gpus,
        per_gpu=per_gpu,
    )


def _environment(gpus: int) -> EnvironmentSnapshot:
    return EnvironmentSnapshot(
        python_version="3.12.3",
        platform="Linux-6.8-x86_64",
        packages={"torch": "2.11.0", "transformers": "5.17.0", "mlflow": "3.17.2"},
        cuda_runtime="13.0",
        driver_version="580.159.04",
        gpus=[
            GpuSnapshot(
                cuda_index=i,
                nvml_index=i,
                name="NVIDIA H200",
                uuid=_uuid(i),
                memory_total_b=150_000_000_000,
                power_limit_w=700.0,
            )
            for i in range(gpus)
        ],
        git_commit="0123456789abcdef0123456789abcdef01234567",
        git_dirty=False,
    )


def result(experiment_id: str, ticks: int, gpus: int = 1, interval_s: float = 0.1) -> ExperimentResult:
    """A valid result whose windows match ``trace(ticks, gpus, interval_s)``."""
    cfg = ExperimentConfig.model_validate(
        {"model": "gpt2", "n": 4, "batch_size": 2, "precision": "bf16", "device": "cuda"}
    )
    resolved = resolve(
        cfg,
        weights="random",
        precision="bf16",
        device="cuda",
        revision=None,
        dataset="synthetic",
        tokenizer=None,
        gpus=gpus,
    )
    (i0, i1), (m0, m1) = windows(ticks, interval_s).values()
    seconds = m1 - m0
    energy = _energy(gpus, seconds)
    out_tok = max(1, int(seconds * 1000))
    return ExperimentResult(
        experiment_id=experiment_id,
        measurement_config_hash=resolved.measurement_hash(),
        llem_version="0.1.0",
        config=cfg,
        resolved=resolved,
        model="gpt2",
        backend="pytorch",
        weights="random",
        precision="bf16",
        device="cuda",
        input_tokens=out_tok,
        output_tokens=out_tok,
        total_tokens=2 * out_tok,
        total_energy_j=energy.gross_j,
        total_inference_time_sec=seconds,
        avg_tokens_per_second=out_tok / seconds,
        avg_energy_per_token_j=energy.gross_j / out_tok,
        total_flops=3.2e10,
        flops_method="2*params*tokens",
        energy_source="nvml",
        energy=energy,
        model_load_time_sec=1.25,
        start_time=datetime.fromtimestamp(i0, tz=timezone.utc),
        end_time=datetime.fromtimestamp(m1, tz=timezone.utc),
        windows={"idle": Window(start_s=i0, end_s=i1), "measure": Window(start_s=m0, end_s=m1)},
        environment_snapshot=_environment(gpus),
        timeseries="timeseries.parquet",
    )
