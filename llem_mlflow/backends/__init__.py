"""Model backends: the factory that turns ``cfg.backend`` into a ``protocols.Backend``.

Importing this package is cheap (no torch, no transformers): each backend's module is imported by its
entry in ``BACKENDS`` only when that backend is created. Adding a backend (e.g. ``"vllm"``) is one module
implementing ``protocols.Backend`` plus one entry here (and the name in ``ExperimentConfig.backend``); see
``docs/backends.md``. The package may import only the base modules (config, errors, protocols, ...)
and itself. The modules of the transformers backend:

* ``hf``: ``TransformersBackend`` (load, tokenize, generate, synchronize, warm-up groups);
* ``generation``: one generate() call's bound arguments and its ``BatchStats``;
* ``tokenizing``: which tokenizer (the model's own, else the byte-level fallback of ``tokenizers``);
* ``hub``: where model files come from (local folder, HF cache, hub; offline switches);
* ``catalogue``: the shipped model configs;
* ``runtime``: torch device, precision, versions, CUDA device identities;
* ``shape``: model facts and FLOPs shape, from the config or the loaded modules;
* ``placement``: ``device_map`` over several GPUs (accelerate);
* ``tokens``: left padding, special ids, counting generated tokens;
* ``timing``: ``StepTimer`` (prefill and decode-step timings);
* ``fastpath``: static KV cache, ``torch.compile`` and attention kernel choices for generate();
* ``continuous``: ``batching: continuous``, each call through transformers' ``generate_batch``.

``start_runtime`` starts what a backend's runtime needs before its first batch (the transformers backend:
the CUDA context and cuBLAS, ``runtime.CudaStart``) in the background; the runner calls it as the model
starts loading and waits for it before measuring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from llem_mlflow.errors import ConfigError
from llem_mlflow.protocols import Backend

if TYPE_CHECKING:
    from llem_mlflow.config import ExperimentConfig

__all__ = ["BACKENDS", "STARTS", "Backend", "Started", "create_backend", "start_runtime"]


class Started(Protocol):
    """Work a backend started in the background; ``wait`` joins it: None, or one line saying why it failed."""

    def wait(self, timeout_s: float = ...) -> str | None: ...


def _transformers(cfg: ExperimentConfig) -> Backend:
    from llem_mlflow.backends.continuous import ContinuousBatching
    from llem_mlflow.backends.fastpath import FastPath
    from llem_mlflow.backends.hf import TransformersBackend

    return TransformersBackend(
        cfg.model,
        weights=cfg.weights,
        precision=cfg.precision,
        device=cfg.device,
        seed=cfg.seed,
        device_map=cfg.device_map,
        fast=FastPath.of(cfg),
        trust_remote_code=cfg.trust_remote_code,
        batching=ContinuousBatching(cfg.batch_size) if cfg.batching == "continuous" else None,
    )


#: ``cfg.backend`` -> a function building that backend from the config (importing its runtime lazily).
BACKENDS: dict[str, Callable[[ExperimentConfig], Backend]] = {
    "pytorch": _transformers,
}


def create_backend(cfg: ExperimentConfig) -> Backend:
    """The backend ``cfg.backend`` names, built from ``cfg``; a ConfigError for a name not in ``BACKENDS``."""
    build = BACKENDS.get(cfg.backend)
    if build is None:
        raise ConfigError(f"backend must be one of {', '.join(sorted(BACKENDS))}, not {cfg.backend!r}")
    return build(cfg)


def _transformers_start(cfg: ExperimentConfig) -> Started | None:
    """CUDA's start-up (context, cuBLAS) in a thread; None on CPU and with ``device_map`` (the model then
    decides which GPUs it uses, and a context on a GPU it leaves empty would hold memory there)."""
    if cfg.device == "cpu" or cfg.device_map is not None:
        return None
    from llem_mlflow.backends.runtime import CudaStart, warm_cuda

    precision = cfg.precision
    return CudaStart(lambda: warm_cuda(precision))


#: ``cfg.backend`` -> what starts that backend's runtime in the background (a backend may have none).
STARTS: dict[str, Callable[[ExperimentConfig], Started | None]] = {
    "pytorch": _transformers_start,
}


def start_runtime(cfg: ExperimentConfig) -> Started | None:
    """Start ``cfg.backend``'s runtime in the background (``STARTS``); None when it has nothing to start."""
    start = STARTS.get(cfg.backend)
    return start(cfg) if start is not None else None
