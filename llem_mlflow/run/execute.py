"""run_experiment: the order of operations of one experiment, in the calling process.

checks (output folder, MLflow store, dataset, tokenizer, context; see ``preflight``) -> load
model -> resolved settings and hash -> result folder -> ``measure`` (warm-up, idle baseline,
cycles of counter windows at CUDA-synced edges with the power sampler alongside, idle after) ->
derived figures (``derive``: energy, intervals, uncertainty, flags, FLOPs, latency, environment) ->
ExperimentResult -> result.json + timeseries.parquet (``record``) -> MLflow (``publish``); an
interrupt ends in ``stop``. The backend, the GPU provider (``gpus``), the store probe and the progress
display are injected, so tests run the whole sequence on fakes.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem_mlflow import interrupts
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.config_gpu import GPU_DEFAULTS, with_gpu_defaults, with_settled
from llem_mlflow.errors import BackendError, TrackingError
from llem_mlflow.measure import stages as measure
from llem_mlflow.measure.progress import LogProgress, Progress
from llem_mlflow.measure.timings import Stopwatch
from llem_mlflow.protocols import Backend, LoadedModel
from llem_mlflow.results import files as artifacts
from llem_mlflow.results import identity
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.run import preflight
from llem_mlflow.run.derive import _build_result, _Context
from llem_mlflow.run.gpus import GpuProvider, GpuSet, _no_gpu, _nvml_gpus, _with_gpu_warning
from llem_mlflow.run.publish import Outcome, _Cut, _Logging, _publish, _write_error
from llem_mlflow.run.quality import with_quality
from llem_mlflow.run.record import _remove_if_empty, _timings, _write, _Written, rescue_roots
from llem_mlflow.run.stop import _interrupted, _keep, _Kept, _log_later, _stop, _stop_unlogged, _where
from llem_mlflow.tracking.prefetch import PREFETCH_WAIT_S, Prefetch, prefetch
from llem_mlflow.tracking.runs import ChildOf, active_run_id
from llem_mlflow.tracking.uris import target_tracking_uri

if TYPE_CHECKING:
    from collections.abc import Callable

    from llem_mlflow.backends import Started

    #: Starts a backend's runtime in the background (``backends.start_runtime``); None: nothing to start.
    RuntimeStart = Callable[[ExperimentConfig], Started | None]

#: The public names of ``run``: the entry points and the types in their signatures.
__all__ = ["GpuProvider", "GpuSet", "Outcome", "execute", "gpu_config", "rescue_roots", "run_experiment"]

log = logging.getLogger(__name__)


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
    child_of: ChildOf | None = None,
    start_runtime: RuntimeStart | None = None,
) -> Outcome:
    """Run ``cfg`` with injectable parts: checks, load, measure, write files, then log to MLflow.

    Every check runs before the model loads (``preflight``); the result folder exists before the GPU
    works; files are written before MLflow is called, and a logging failure is returned in
    ``Outcome.tracking_error`` instead of raised, so the measurement is never lost. MLflow is imported in
    the background while the model loads (``prefetch``), and that import has ended before the GPU works.
    ``startup_s``: seconds from process start to this call, when the caller knows them (the CLI); they go
    into the timings block. ``child_of``: log into a new run nested under that parent (a sweep's point;
    see ``tracking``). ``start_runtime``: started as the model loads (see ``_load``); a backend this call
    makes gets ``backends.start_runtime``. On a GPU, unset fields take the GPU defaults (``gpu_config``)."""
    cfg, startup_s = _configured(cfg, backend, startup_s)
    if backend is None:  # bad-input/OOM: a backend this run made is released when the run fails
        kw = {"gpus": gpus, "progress": progress, "store_probe": store_probe, "startup_s": startup_s}
        starter = start_runtime or _start_runtime
        return _owning(cfg, _default_backend(cfg), child_of=child_of, start_runtime=starter, **kw)
    clock = Stopwatch()
    interrupts.last_words(None)  # an earlier run's, in this process
    if startup_s is not None:
        clock.laps["startup"] = startup_s  # before the stopwatch started: not part of total_s
    show, probe = progress or LogProgress(), store_probe or _probe_store
    start = datetime.now(timezone.utc)
    show.stage("checking output folder, dataset, context length and MLflow store")
    with clock.lap("checks"):
        plan = preflight.check(cfg, backend, probe)
    for warning in plan.warnings:
        log.warning(warning)
    imports = prefetch(cfg.tracking_uri) if cfg.mlflow else None
    show.stage(f"loading {cfg.model} ({cfg.weights} weights)")
    loaded = _load(cfg, backend, start_runtime, clock)
    cfg = with_settled(cfg, loaded.settled)  # a GPU default the model cannot run (the load's warning)
    resolved = _resolve(cfg, loaded, plan, options=_options(cfg, backend))
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
        with clock.lap("derive"):  # the quality figure, when asked, is taken here: after every window
            result = with_quality(cfg, _build_result(context, measurement, backend), backend)
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
            m = _measure_stages(c, backend, show)
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


def _measure_stages(c: _Context, backend: Backend, show: Progress) -> measure.Measurement:
    """``measure.measure`` (in-process), or the server scenario's requests (``serve.measure_server``)."""
    devices = list(c.gpu_set.devices)
    if c.cfg.scenario == "server":
        from llem_mlflow.run.serve import measure_server

        return measure_server(c.cfg, backend, devices, c.plan.prompts, show)
    return measure.measure(c.cfg, backend, devices, c.plan.prompts, show)


def _configured(
    cfg: ExperimentConfig, backend: object | None, startup_s: float | None
) -> tuple[ExperimentConfig, float | None]:
    """(``gpu_config(cfg, backend)``, ``startup_s``): with no backend yet, telling the device can import torch
    (seconds), before the run's stopwatch starts, so the timings count it as start-up; a backend's own
    ``planned_device`` is quick and adds nothing."""
    t0 = time.perf_counter()
    configured = gpu_config(cfg, backend)
    if startup_s is None or backend is not None:
        return configured, startup_s
    return configured, startup_s + (time.perf_counter() - t0)


def gpu_config(cfg: ExperimentConfig, backend: object | None = None) -> ExperimentConfig:
    """``cfg`` with the GPU defaults (``config_gpu.with_gpu_defaults``) of the device it will run on.

    The device: ``backend.planned_device()`` where the backend has one; with no backend,
    ``backends.runtime.resolve_device`` (imports torch unless ``device: cpu``). ``cfg`` unchanged in the
    server scenario, when every default's field is set, or when the device cannot be told (a backend
    without ``planned_device``; a failing check, which then fails the run where it always did).
    """
    if cfg.scenario == "server" or not set(GPU_DEFAULTS) - cfg.model_fields_set:
        return cfg
    planned = getattr(backend, "planned_device", None)
    if backend is not None and not callable(planned):
        return cfg
    try:
        if callable(planned):
            device = str(planned())
        else:
            from llem_mlflow.backends.runtime import resolve_device

            device = resolve_device(cfg.device)
    except Exception:  # the run's own checks raise it again, in their place
        return cfg
    return with_gpu_defaults(cfg, device)[0]


def _load(
    cfg: ExperimentConfig, backend: Backend, start: RuntimeStart | None, clock: Stopwatch
) -> LoadedModel:
    """``backend.load()``, with the backend's runtime started beside it (``start``: CUDA's context and cuBLAS
    for the transformers backend) and joined before this returns, inside the ``load`` lap: none of it runs
    into the warm-up or a measured window, nor is it left running when the load fails. Its failure is a
    warning of the run, never an error.
    """
    with clock.lap("load"):
        started = start(cfg) if start is not None else None
        try:
            loaded = backend.load()
        finally:
            problem = started.wait() if started is not None else None
    if problem is None:
        return loaded
    log.warning(problem)
    return replace(loaded, warnings=[*loaded.warnings, problem])


def _owning(cfg: ExperimentConfig, backend: Backend, **kw: Any) -> Outcome:
    """``execute`` with a backend it made: on any failure the model is released (``release()``, when
    the backend has one), not kept alive by the traceback until the caller drops the exception; a server
    this run launched is stopped when the run ends, however it ends."""
    release = getattr(backend, "release", None)
    try:
        outcome = execute(cfg, backend=backend, **kw)
    except BaseException:
        if callable(release):
            release()
        raise
    if cfg.scenario == "server" and callable(release):
        release()  # stop the server this run launched (an attached one is left running)
    return outcome


def _await(imports: Prefetch | None, clock: Stopwatch) -> None:
    """Let the background MLflow import end before the GPU works, so it cannot slow a measured window."""
    if imports is None:
        return
    with clock.lap("import_wait"):
        done = imports.wait()
    if not done:
        log.warning("MLflow is still being imported after %g s; measuring anyway", PREFETCH_WAIT_S)


def _default_backend(cfg: ExperimentConfig) -> Backend:
    if cfg.scenario == "server":
        from llem_mlflow.run.serve import server_backend

        return server_backend(cfg)
    from llem_mlflow.backends import create_backend

    return create_backend(cfg)


def _start_runtime(cfg: ExperimentConfig) -> Started | None:
    if cfg.scenario == "server":
        return None  # the model runs in the server's process
    from llem_mlflow.backends import start_runtime

    return start_runtime(cfg)


def _probe_store(cfg: ExperimentConfig) -> str | None:
    """None when the store a run would log to answers quickly, else why not (one line)."""
    if active_run_id() is not None:
        return None  # the caller's own run: its store is the caller's business
    from llem_mlflow.tracking import store_probe

    return store_probe.probe_store(target_tracking_uri(cfg.tracking_uri))


def _options(cfg: ExperimentConfig, backend: Backend) -> dict[str, Any] | None:
    """The server scenario's settings, hashed as ``backend_options`` (None in-process)."""
    if cfg.scenario != "server":
        return None
    from llem_mlflow.run.serve import server_options

    return server_options(cfg, backend)


def _resolve(
    cfg: ExperimentConfig,
    loaded: LoadedModel,
    plan: preflight.Plan,
    attention: str | None = None,
    options: dict[str, Any] | None = None,
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
        backend_options=options,
        backend="server" if options else None,
    )


def _experiment_id(start: datetime, config_hash: str) -> str:
    return f"{start.strftime('%Y%m%dT%H%M%SZ')}-{config_hash[:8]}-{uuid.uuid4().hex[:6]}"


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
