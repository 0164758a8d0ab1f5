"""The server scenario inside ``run``: its backend (the server's GPUs found through NVML), the load it
sends (the prepared prompts as text, in each cycle's order), its measurement and its figures.

``execute`` runs a server-scenario config through the same order as an in-process one: checks, load
(= launch or attach), result folder, measure (``measure.serving`` instead of ``measure.stages``), derive,
write, log. The server a run launched is stopped when the run ends, whatever ends it (``release``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llem_mlflow.backends.server import ServerBackend
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.config_server import DEFAULT_CONCURRENCY
from llem_mlflow.errors import ConfigError
from llem_mlflow.measure import serving as measure_serving
from llem_mlflow.measure import stages as measure
from llem_mlflow.measure import workload
from llem_mlflow.measure.progress import Progress
from llem_mlflow.protocols import Backend, CudaDeviceId, GpuDevice
from llem_mlflow.secrets import scrub_secrets
from llem_mlflow.served import LoadSettings
from llem_mlflow.serving.client import StreamingClient
from llem_mlflow.serving.driver import ServerLoad

#: Engines that honour ``ignore_eos`` and ``min_tokens`` (every request gets exactly max_output_tokens).
ENGINES_WITH_EXACT_LENGTH = ("vllm", "sglang")
#: Folder under ``output_dir`` where launched servers' logs are kept.
SERVER_LOGS = "server-logs"


def server_backend(cfg: ExperimentConfig) -> ServerBackend:
    """The backend of a server-scenario run: launch or attach, GPUs from NVML, logs under output_dir."""
    return ServerBackend(cfg, server_gpus, Path(cfg.output_dir) / SERVER_LOGS)


def server_gpus(wanted: str | None, nvml: Any = None) -> list[CudaDeviceId]:
    """The GPUs the server runs on: ``wanted`` (indices or UUIDs), else those ``CUDA_VISIBLE_DEVICES``
    shows (a launched server inherits it); [] without NVML (energy is then not measured, as on CPU).

    Raises:
        ConfigError: ``wanted`` names a GPU NVML does not see. ``nvml``: a fake pynvml in tests.
    """
    from llem_mlflow.measure.device import cuda_visible_entries, try_open_session, visible_nvml_gpus

    session, _ = try_open_session(nvml)
    if session is None:
        if wanted:
            raise ConfigError(f"server_gpus: {wanted!r} given, but NVML cannot be opened here: remove it")
        return []
    try:
        value = wanted if wanted is not None else os.environ.get("CUDA_VISIBLE_DEVICES")
        infos = visible_nvml_gpus(session.all_gpus(), value)
    finally:
        session.close()
    if wanted is not None and len(infos) != len(cuda_visible_entries(wanted) or []):
        seen = ", ".join(f"{g.nvml_index} ({g.uuid})" for g in infos) or "none"
        raise ConfigError(f"server_gpus: {wanted!r} names a GPU NVML does not see (matched: {seen})")
    return [CudaDeviceId(i, g.uuid, g.pci_bus_id) for i, g in enumerate(infos)]


def load_settings(cfg: ExperimentConfig) -> LoadSettings:
    """The load ``cfg`` asks for: open loop at ``request_rate``, else closed at ``concurrency`` (8)."""
    if cfg.request_rate is not None:
        return LoadSettings(
            mode="open",
            n=cfg.n,
            max_output_tokens=cfg.max_output_tokens,
            api=cfg.api,
            request_rate=cfg.request_rate,
            timeout_s=cfg.request_timeout_s,
            seed=cfg.seed,
        )
    return LoadSettings(
        mode="closed",
        n=cfg.n,
        max_output_tokens=cfg.max_output_tokens,
        api=cfg.api,
        concurrency=cfg.concurrency or DEFAULT_CONCURRENCY,
        timeout_s=cfg.request_timeout_s,
        seed=cfg.seed,
    )


def server_load(cfg: ExperimentConfig, backend: ServerBackend, prompts: list[list[int]]) -> ServerLoad:
    """The requests of each cycle: the prompts' text, cycle 0 in dataset order, later cycles shuffled
    as an in-process run's batches are (``workload.cycle_order``)."""
    info = backend.info
    if info is None:
        raise RuntimeError("server_load before the server was started")
    texts = [backend.decode(ids) for ids in prompts]
    client = StreamingClient(
        info.url, cfg.api, info.served_model, cfg.request_timeout_s, **exact_length_fields(info.engine, cfg)
    )
    order = lambda cycle: workload.cycle_order(texts, cycle, cfg.seed)  # noqa: E731
    return ServerLoad(client, load_settings(cfg), order, died=backend.died)


def exact_length_fields(engine: str, cfg: ExperimentConfig) -> dict[str, Any]:
    """How to ask ``engine`` for exactly ``max_output_tokens`` (EOS ignored): vLLM and SGLang take
    ``ignore_eos``/``min_tokens``; ``transformers serve`` answers HTTP 422 to those and takes
    ``generation_config: {"min_new_tokens": N}`` (a JSON string); others get neither (usage counts)."""
    if engine in ENGINES_WITH_EXACT_LENGTH:
        return {"engine_fields": True}
    if engine == "transformers":
        config = json.dumps({"min_new_tokens": cfg.max_output_tokens})
        return {"engine_fields": False, "extra": {"generation_config": config}}
    return {"engine_fields": False}


def measure_server(
    cfg: ExperimentConfig,
    backend: Backend,
    devices: list[GpuDevice],
    prompts: list[list[int]],
    show: Progress,
) -> measure.Measurement:
    """The server scenario's ``measure``: requests to the backend's server, counters at client-clock edges."""
    server = served_backend(backend)
    if server is None:
        raise TypeError("scenario: server needs a ServerBackend")
    return measure_serving.measure_server(cfg, server_load(cfg, server, prompts), devices, show)


def served_backend(backend: Backend) -> ServerBackend | None:
    """The ``ServerBackend`` in ``backend`` (itself, or the one a sweep's ``LoadOnce`` wraps); None."""
    inner = getattr(backend, "inner", backend)
    return inner if isinstance(inner, ServerBackend) else None


def server_options(cfg: ExperimentConfig, backend: Backend) -> dict[str, object]:
    """What decides a server measurement beyond the workload numbers (hashed as ``backend_options``):
    the scenario, the engine and its version, the launch command, the load and the API."""
    server = served_backend(backend)
    info = server.info if server is not None else None
    settings = load_settings(cfg)
    return {
        "scenario": "server",
        "engine": info.engine if info else None,
        "engine_version": info.engine_version if info else None,
        "served_model": info.served_model if info else None,
        "command": scrub_secrets(cfg.server_command) if cfg.server_command else None,  # the template
        "load": settings.mode,
        "concurrency": settings.concurrency,
        "request_rate": settings.request_rate,
        "api": cfg.api,
        "request_timeout_s": cfg.request_timeout_s,
    }
