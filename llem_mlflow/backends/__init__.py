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
* ``fastpath``: static KV cache, ``torch.compile`` and attention kernel choices for generate().
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llem_mlflow.errors import ConfigError
from llem_mlflow.protocols import Backend

if TYPE_CHECKING:
    from llem_mlflow.config import ExperimentConfig

__all__ = ["BACKENDS", "Backend", "create_backend"]


def _transformers(cfg: ExperimentConfig) -> Backend:
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
