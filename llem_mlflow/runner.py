"""run_experiment: the order of operations of one experiment, in the calling process.

load model -> prompts -> warm-up -> idle baseline -> measured window (counter at CUDA-synced
edges, power sampler alongside) -> FLOPs -> environment -> ExperimentResult -> result.json +
timeseries.parquet -> MLflow. The backend and the GPU provider are injected, so tests run the
whole sequence on fakes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llem_mlflow import artifacts, energy, environment, flops, recording, workload
from llem_mlflow._version import __version__
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.errors import DeviceError, TrackingError
from llem_mlflow.protocols import Backend, BatchStats, CudaDeviceId, GpuDevice, GpuInfo, LoadedModel
from llem_mlflow.result import EnergyBreakdown, ExperimentResult, Window
from llem_mlflow.sampler import PowerSampler
from llem_mlflow.trace import PowerTrace

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


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


@dataclass(frozen=True)
class _Measurement:
    stats: list[BatchStats]
    window: energy.CounterWindow
    idle: energy.CounterWindow | None
    trace: PowerTrace
    warnings: list[str]


def run_experiment(config: str | Path | ExperimentConfig | None = None, **overrides: Any) -> ExperimentResult:
    """Run one experiment in this process, write its files and log it to MLflow.

    Args:
        config: a YAML path, an ``ExperimentConfig``, or None for defaults.
        **overrides: config fields to override (e.g. ``model="gpt2", n=4``).

    Returns:
        The validated ``ExperimentResult`` (also written to ``<output_dir>/<experiment_id>/result.json``).

    Raises:
        ConfigError: invalid configuration. Other ``LlemError``s: runtime failures.
    """
    return execute(load_config(config, **overrides)).result


def execute(
    cfg: ExperimentConfig,
    *,
    backend: Backend | None = None,
    gpus: GpuProvider | None = None,
    progress: Progress | None = None,
) -> Outcome:
    """Run ``cfg`` with injectable parts; files are written before MLflow is called."""
    say = progress or log.info
    backend = backend or _default_backend(cfg)
    start = datetime.now(timezone.utc)
    say(f"loading {cfg.model} ({cfg.weights} weights)")
    loaded = backend.load()
    prompts = _prompts(cfg, backend, loaded)
    gpu_set = (gpus or _nvml_gpus)(loaded.cuda_devices) if loaded.device == "cuda" else _no_gpu(loaded)
    try:
        measurement = _measure(cfg, backend, gpu_set, prompts, say)
    finally:
        gpu_set.close()
    result = _build_result(cfg, start, loaded, gpu_set, measurement, backend)
    return _record(cfg, result, measurement, say)


def _default_backend(cfg: ExperimentConfig) -> Backend:
    from llem_mlflow.backend import TransformersBackend

    return TransformersBackend(
        cfg.model,
        weights=cfg.weights,
        precision=cfg.precision,
        device=cfg.device,
        seed=cfg.seed,
    )


def _prompts(cfg: ExperimentConfig, backend: Backend, loaded: LoadedModel) -> list[list[int]]:
    if cfg.dataset == "synthetic":
        return workload.synthetic_prompts(loaded.shape.vocab_size, cfg.n, cfg.max_input_tokens, cfg.seed)
    texts = workload.read_jsonl_prompts(Path(cfg.dataset), cfg.n)
    return backend.tokenize(texts, cfg.max_input_tokens)


def _no_gpu(loaded: LoadedModel) -> GpuSet:
    msg = (
        f"energy not measured: the model runs on {loaded.device}, not an NVIDIA GPU (energy fields are null)"
    )
    return GpuSet(devices=[], driver_version=None, warning=msg)


def _nvml_gpus(cuda_ids: Sequence[CudaDeviceId]) -> GpuSet:
    from llem_mlflow.device import try_open_session

    session, reason = try_open_session()
    if session is None:
        return GpuSet(devices=[], driver_version=None, warning=f"energy not measured: {reason}")
    try:
        return GpuSet(devices=session.devices_for(list(cuda_ids)), driver_version=session.driver_version())
    except DeviceError as exc:
        return GpuSet(
            devices=[], driver_version=session.driver_version(), warning=f"energy not measured: {exc}"
        )


def _measure(
    cfg: ExperimentConfig, backend: Backend, gpu_set: GpuSet, prompts: list[list[int]], say: Progress
) -> _Measurement:
    groups = workload.batches(prompts, cfg.batch_size)
    for i in range(cfg.warmup_batches):
        say(f"warm-up {i + 1}/{cfg.warmup_batches}")
        backend.generate(groups[i % len(groups)], cfg.max_output_tokens)
    devices = gpu_set.devices
    sampler = PowerSampler(devices, cfg.sampling_interval_s)
    sampler.start()
    try:
        idle = None
        if devices and cfg.baseline_s > 0:
            say(f"idle baseline {cfg.baseline_s:g} s (model loaded)")
            idle = energy.measure_idle(devices, backend.synchronize, cfg.baseline_s)
        say(f"measuring {cfg.n} prompts in {len(groups)} batches")
        stats, window = energy.measure_window(
            devices, backend.synchronize, lambda: [backend.generate(b, cfg.max_output_tokens) for b in groups]
        )
    finally:
        trace = sampler.stop()
    warnings = [w for w in [gpu_set.warning, *sampler.warnings] if w]
    return _Measurement(stats=stats, window=window, idle=idle, trace=trace, warnings=warnings)


def _energy(measurement: _Measurement, infos: list[GpuInfo]) -> tuple[EnergyBreakdown | None, list[str]]:
    if not infos:
        return None, []
    breakdown = energy.build_breakdown(measurement.window, measurement.idle, measurement.trace, infos)
    return breakdown, energy.energy_warnings(breakdown, measurement.window)


def _build_result(
    cfg: ExperimentConfig,
    start: datetime,
    loaded: LoadedModel,
    gpu_set: GpuSet,
    m: _Measurement,
    backend: Backend,
) -> ExperimentResult:
    infos = [d.info for d in gpu_set.devices]
    breakdown, energy_warnings = _energy(m, infos)
    in_tok = sum(s.input_tokens for s in m.stats)
    out_tok = sum(s.output_tokens for s in m.stats)
    seconds = m.window.duration_s
    gross = breakdown.gross_j if breakdown else None
    for w in [*m.warnings, *energy_warnings]:  # the backend already logged its own warnings
        log.warning(w)
    warnings = [*loaded.warnings, *m.warnings, *energy_warnings]
    windows = {"measure": Window(start_s=m.window.start_s, end_s=m.window.end_s)}
    if m.idle is not None:
        windows["idle"] = Window(start_s=m.idle.start_s, end_s=m.idle.end_s)
    return ExperimentResult(
        experiment_id=_experiment_id(start, cfg.config_hash()),
        measurement_config_hash=cfg.config_hash(),
        llem_version=__version__,
        config=cfg,
        model=cfg.model,
        backend=cfg.backend,
        weights=loaded.weights,  # type: ignore[arg-type]
        precision=loaded.precision,
        device=loaded.device,
        input_tokens=in_tok,
        output_tokens=out_tok,
        total_tokens=in_tok + out_tok,
        total_energy_j=gross,
        total_inference_time_sec=seconds,
        avg_tokens_per_second=out_tok / seconds if seconds > 0 else 0.0,
        avg_energy_per_token_j=gross / out_tok if gross is not None and out_tok else None,
        total_flops=flops.estimate_generation_flops(loaded.shape, m.stats),
        flops_method=flops.FLOPS_METHOD,
        energy_source="nvml" if breakdown else "none",
        energy=breakdown,
        model_load_time_sec=loaded.load_time_s,
        warnings=warnings,
        start_time=start,
        end_time=datetime.now(timezone.utc),
        windows=windows,
        environment_snapshot=environment.snapshot(infos, gpu_set.driver_version, backend.versions()),
        timeseries=artifacts.TRACE_FILE,
    )


def _experiment_id(start: datetime, config_hash: str) -> str:
    return f"{start.strftime('%Y%m%dT%H%M%SZ')}-{config_hash[:8]}-{uuid.uuid4().hex[:6]}"


def _record(cfg: ExperimentConfig, result: ExperimentResult, m: _Measurement, say: Progress) -> Outcome:
    folder = artifacts.result_dir(Path(cfg.output_dir), result.experiment_id)
    windows = {name: (w.start_s, w.end_s) for name, w in result.windows.items()}
    trace_path = artifacts.write_trace_parquet(m.trace, folder, windows)
    json_path = artifacts.write_result_json(result, folder)
    say(f"wrote {json_path} and {trace_path.name}")
    run_id = None
    if cfg.mlflow:
        run_id = recording.log_folder(folder, cfg.tracking_uri, cfg.experiment_name, cfg.run_name, (result, m.trace))
    return Outcome(result=result, result_dir=folder, run_id=run_id)
