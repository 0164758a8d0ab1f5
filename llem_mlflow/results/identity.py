"""What a run measured, with every ``auto`` resolved, and the ``measurement_config_hash`` over it.

The requested config (``ExperimentConfig``) may say ``device: auto``; what decides a measurement
is what the run resolved: device kind, precision, weights source, model revision, dataset content,
tokenizer, backend options and the workload numbers. ``ResolvedSettings`` holds exactly those, is
stored in result.json as ``resolved``, and the hash is recomputable from it alone:

    sha256(canonical JSON of resolved)[:16], canonical = sorted keys, no spaces, UTF-8.

Bump ``HASH_RECIPE`` whenever a field is added, removed or its meaning changes, and list the new
recipe's fields in ``RECIPE_FIELDS`` (results of older recipes keep theirs); a test pins a literal
hash per recipe so a refactor cannot change one silently. A field in ``HASHED_WHEN_SET`` is the exception:
at its default it is left out of ``resolved`` (every dump) and so of the hash, so adding it changed no earlier
hash and needs no new recipe (``batching``: every result before it was ``static``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from llem_mlflow.config import ExperimentConfig

#: Version of the hash recipe (the fields below and how they are spelled).
HASH_RECIPE = 7
#: Fields each recipe hashes; an older result keeps its recipe, so its hash stays recomputable.
_RECIPE_2 = (
    "recipe", "model", "model_revision", "backend", "backend_options", "weights", "precision", "device", "n",
    "batch_size", "max_input_tokens", "max_output_tokens", "dataset", "prompt_field", "tokenizer", "seed",
    "warmup_batches", "baseline_s", "sampling_interval_s",
)  # fmt: skip
_RECIPE_3 = (*_RECIPE_2, "cycles", "cooldown_s", "warmup_settle_cv_pct", "warmup_max_batches")
_RECIPE_4 = (
    *_RECIPE_3,
    "measurement_methodology",
    "isolated_prefill",
    "idle_settle_max_s",
    "device_map",
    "gpus",
)
_RECIPE_5 = (*_RECIPE_4, "cache", "compile", "attention")
_RECIPE_6 = (*_RECIPE_5, "min_window_s")
RECIPE_FIELDS: dict[int, tuple[str, ...]] = {
    2: _RECIPE_2,
    3: _RECIPE_3,
    4: _RECIPE_4,
    5: _RECIPE_5,
    6: _RECIPE_6,
    7: (*_RECIPE_6, "warmup_power_settle_pct", "warmup_power_max_s"),
}
#: Fields added inside recipe 7, hashed (and kept in ``resolved``) only when not at this value, their default.
HASHED_WHEN_SET: dict[str, object] = {"batching": "static"}
SYNTHETIC = "synthetic"


class ResolvedSettings(BaseModel):
    """The settings that decide a measurement, as the run resolved them (no ``auto`` left)."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    recipe: int = HASH_RECIPE
    model: str
    model_revision: str | None = Field(None, description="Commit of pretrained weights; null for random.")
    backend: str
    backend_options: dict[str, Any] = Field(default_factory=dict)
    weights: Literal["pretrained", "random"]
    precision: Literal["fp32", "fp16", "bf16", "unknown"]  # unknown: what a server runs, when not given
    device: Literal["cpu", "cuda"]
    n: int
    batch_size: int
    max_input_tokens: int
    max_output_tokens: int
    dataset: str = Field(description="'synthetic' or 'sha256:<hex>' of the prompt file's bytes.")
    prompt_field: str | None = Field(None, description="JSON key of the prompt text; null for synthetic.")
    tokenizer: str | None = Field(None, description="Tokenizer of text prompts; null for synthetic.")
    seed: int
    warmup_batches: int
    baseline_s: float
    sampling_interval_s: float
    cycles: int = Field(1, description="Measured windows (recipe 3 on).")
    cooldown_s: float = Field(0.0, description="Pause between cycles (recipe 3 on).")
    warmup_settle_cv_pct: float | None = Field(None, description="Warm-up settle threshold (recipe 3 on).")
    warmup_max_batches: int = Field(20, description="Warm-up cap when settling (recipe 3 on).")
    measurement_methodology: Literal["total", "steady_state"] = Field("total", description="Recipe 4 on.")
    isolated_prefill: bool = Field(False, description="Prefill measured alone too (recipe 4 on).")
    idle_settle_max_s: float = Field(0.0, description="Idle settle cap before the baseline (recipe 4 on).")
    device_map: Any = Field(None, description="Requested split over GPUs, as asked (recipe 4 on).")
    gpus: int = Field(0, description="CUDA devices holding weights; 0 on CPU (recipe 4 on).")
    cache: Literal["dynamic", "static"] = Field("dynamic", description="KV cache (recipe 5 on).")
    compile: Literal["off", "default", "reduce-overhead", "max-autotune", "graph"] = Field(
        "off", description="torch.compile mode of the decode step, or graph: our captured loop (recipe 5 on)."
    )
    attention: str | None = Field(
        None, description="attn_implementation the loaded model uses, e.g. sdpa (recipe 5 on)."
    )
    min_window_s: float = Field(0.0, description="Least window per cycle; sets the passes (recipe 6 on).")
    warmup_power_settle_pct: float | None = Field(None, description="Power settle warm-up (recipe 7 on).")
    warmup_power_max_s: float | None = Field(
        None, description="Its cap; null without the power settle, which it cannot change then (recipe 7 on)."
    )
    batching: Literal["static", "continuous"] = Field(
        "static", description="static: generate() per batch; continuous: generate_batch (hashed when set)."
    )

    @model_serializer(mode="wrap")
    def _omit_unset_additions(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # a HASHED_WHEN_SET field at its default is left out of every dump (result.json, the hash), so
        # `resolved` of such a run is byte for byte what it was before the field existed
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if k not in HASHED_WHEN_SET or v != HASHED_WHEN_SET[k]}

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: int) -> int:
        if value not in RECIPE_FIELDS:
            known = ", ".join(map(str, RECIPE_FIELDS))
            raise ValueError(f"hash recipe {value} is unknown here (known: {known}); upgrade llem-mlflow")
        return value

    def measurement_hash(self) -> str:
        """First 16 hex digits of SHA-256 over the canonical JSON of this recipe's fields."""
        fields = set(RECIPE_FIELDS[self.recipe]) | (set(HASHED_WHEN_SET) if self.recipe >= 7 else set())
        data = self.model_dump(mode="json", include=fields)
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def dataset_digest(path: Path) -> str:
    """``sha256:<hex>`` of a prompt file's bytes: the same prompts hash the same wherever they live."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def stable_tokenizer_name(name: str | None) -> str | None:
    """The tokenizer's name without where it was read from: ``"gpt2 (HF cache)"`` -> ``"gpt2"``.

    The same tokenizer read from the hub once and from the cache later measures the same thing.
    """
    return None if name is None else name.split(" (", 1)[0]


def resolve(
    cfg: ExperimentConfig,
    *,
    weights: str,
    precision: str,
    device: str,
    revision: str | None,
    dataset: str,
    tokenizer: str | None,
    backend_options: dict[str, Any] | None = None,
    gpus: int = 0,
    attention: str | None = None,
    backend: str | None = None,
) -> ResolvedSettings:
    """``cfg`` with what the run decided; ``dataset`` is ``'synthetic'`` or a ``dataset_digest``.

    ``attention`` is the implementation the loaded model uses (``fastpath.resolved_attention``);
    without it, the requested ``cfg.attention``.
    """
    text = dataset != SYNTHETIC
    return ResolvedSettings.model_validate(
        {
            "model": cfg.model,
            "model_revision": revision if weights == "pretrained" else None,
            "backend": backend or cfg.backend,
            "backend_options": backend_options or {},
            "weights": weights,
            "precision": precision,
            "device": device,
            "n": cfg.n,
            "batch_size": cfg.batch_size,
            "max_input_tokens": cfg.max_input_tokens,
            "max_output_tokens": cfg.max_output_tokens,
            "dataset": dataset,
            "prompt_field": cfg.prompt_field if text else None,
            "tokenizer": stable_tokenizer_name(tokenizer) if text else None,
            "seed": cfg.seed,
            "warmup_batches": cfg.warmup_batches,
            "baseline_s": cfg.baseline_s,
            "sampling_interval_s": cfg.sampling_interval_s,
            "cycles": cfg.cycles,
            "cooldown_s": cfg.cooldown_s,
            "warmup_settle_cv_pct": cfg.warmup_settle_cv_pct,
            "warmup_max_batches": cfg.warmup_max_batches,
            "measurement_methodology": cfg.measurement_methodology,
            "isolated_prefill": cfg.isolated_prefill,
            "idle_settle_max_s": cfg.idle_settle_max_s,
            "device_map": cfg.device_map,
            "gpus": gpus if device == "cuda" else 0,
            "cache": cfg.cache,
            "compile": cfg.compile,
            "attention": attention or cfg.attention,
            "min_window_s": cfg.min_window_s,
            "warmup_power_settle_pct": cfg.warmup_power_settle_pct,
            "warmup_power_max_s": cfg.warmup_power_max_s if cfg.warmup_power_settle_pct is not None else None,
            "batching": cfg.batching,
        }
    )
