"""Fast PyTorch generation paths: static KV cache, torch.compile through ``generate()``, attention kernel.

Eager ``generate()`` at small batch is launch-bound (one Python-dispatched kernel per op per step). Three
config fields pick a faster path; all three enter the measurement hash (recipe 5):

* ``cache``: ``dynamic`` (transformers' default ``DynamicCache``, grown by concatenation each step) or
  ``static`` (a ``StaticCache`` preallocated to a fixed length, so every decode step has the same shapes).
* ``compile``: ``off``, or a ``torch.compile`` mode for the decode step: ``default``, ``reduce-overhead``
  (inductor + CUDA graphs: one graph replay per step) or ``max-autotune``; or ``graph``: not generate()
  but our own decode loop (``decode_loop``: prefill once, then the whole decode step, model forward and
  greedy argmax, captured in one CUDA graph per batch size and replayed per token; uncaptured on CPU),
  which removes generate()'s per-step Python. Every value but ``off`` needs ``cache: static``.
* ``attention``: ``attn_implementation`` at load: ``eager``, ``sdpa``, or ``auto`` (the model's default).

What transformers 5.24 does (``transformers/generation/utils.py`` unless named otherwise):

* Static cache per call: ``GenerationConfig(cache_implementation="static")`` (or the same ``generate()``
  kwarg); ``_prepare_cache_for_generation`` then builds a fresh ``StaticCache`` for every call, for the
  call's batch size, ``max_cache_len = max(max_length, generation_config.max_cache_len)``, and never less
  than the longest earlier call (``_prepare_static_cache`` keeps ``model._previous_max_cache_length``).
  We set ``max_cache_len = max_input_tokens + max_output_tokens`` so every call, isolated-prefill passes
  included, gets the same cache length (a new length would recompile).
* Auto-compile (``_valid_auto_compile_criteria``): the decode forward runs through
  ``get_compiled_call(generation_config.compile_config)`` (``torch.compile(model.__call__, ...)``,
  ``modeling_utils.py``) when ``generation_config.disable_compile`` is not set, the model is on
  cuda/xpu/neuron/tpu (or ``compile_config._compile_all_devices`` is set: CPU too), the cache is
  compileable and not a ``DynamicCache`` (so a static cache), no quantizer forbids it and no CPU/disk
  offload. ``_can_compile_fullgraph`` is not consulted. So **a static cache on CUDA compiles by default**
  (``CompileConfig()``: mode ``reduce-overhead``, ``fullgraph=False``, ``dynamic=None``); ``compile: off``
  with ``cache: static`` therefore sets ``disable_compile=True`` to measure the eager static path.
* The prefill (``_prefill``) always runs eagerly; only decode steps (one token per row) are compiled.
  ``get_compiled_call`` reuses the compiled callable while the ``CompileConfig`` compares equal.
* CUDA graphs: the decode loop copies the logits it keeps (``outputs.logits[:, -1].to(copy=True)``), so
  CUDA-graph output buffers overwritten by the next replay are never read. Wrapping ``model.forward`` in
  ``torch.compile(mode="reduce-overhead")`` outside ``generate()`` has no such copy ("accessing tensor
  output of CUDAGraphs that has been overwritten by a subsequent run"), and stacks on generate()'s own
  compile of a static cache on CUDA.
* ``CompileConfig`` (``generation/configuration_utils.py``): fullgraph, dynamic, backend, mode, options.
* Attention: ``attn_implementation`` at ``from_pretrained``/``from_config``; ``None`` tries ``sdpa`` and
  falls back to ``eager`` (``modeling_utils.get_correct_attn_implementation``); ``flash_attention_2`` needs
  the flash-attn package (not installed here) and ``flex_attention`` is per architecture (llama yes, gpt2
  no), so neither is offered. ``model.config._attn_implementation`` holds what the loaded model uses.

Shapes and warm-up: compilation and capture happen on the first decode step of each new shape. Decode
shapes depend only on the batch size (cache length is fixed above, the 4-D mask is built to the cache
length), so a run recompiles once per distinct batch size: a smaller last batch (``n`` not a multiple of
``batch_size``) compiles its own graph, and ``dynamic=False`` keeps each size on its own static graph
(automatic dynamic shapes would serve later calls from a slower symbolic-shape graph). ``compile: graph``
likewise captures one graph per batch size (a bucket: its own static cache and tensors). ``warmup_groups``
names the batches that must run in warm-up so that nothing compiles or captures inside a measured window.

Backend wiring: ``load_kwargs`` at ``from_pretrained``/``from_config``; ``prepare`` after the model is
loaded (and after its generation config is replaced); ``generate_kwargs`` merged into each call's
``GenerationConfig``; ``resolved_attention`` for ``identity.resolve(attention=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from llem_mlflow.backends import decode_loop
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class FastPath:
    """The generation-path options of one run (``ExperimentConfig`` fields; the default is eager)."""

    cache: str = "dynamic"
    compile: str = "off"
    attention: str = "auto"
    max_cache_len: int | None = None  # static cache length: max_input_tokens + max_output_tokens
    fallback: bool = False  # graph came from the GPU defaults: a model the loop cannot run goes eager

    @classmethod
    def of(cls, cfg: ExperimentConfig) -> FastPath:
        """The options ``cfg`` asks for (``fallback``: its ``compile: graph`` is a GPU default)."""
        fallback = cfg.compile == "graph" and "compile" not in cfg.model_fields_set
        return cls(
            cfg.cache, cfg.compile, cfg.attention, cfg.max_input_tokens + cfg.max_output_tokens, fallback
        )

    @property
    def compiled(self) -> bool:
        """generate() compiles its decode step (``torch.compile``)."""
        return self.compile not in ("off", "graph")

    @property
    def graph(self) -> bool:
        """Our own decode loop (``decode_loop``) instead of generate(), CUDA graphs on CUDA."""
        return self.compile == "graph"

    @property
    def per_batch_size(self) -> bool:
        """Something is built per batch size on its first call (a compile or a graph capture)."""
        return self.compiled or self.graph


def _fast(options: FastPath | ExperimentConfig) -> FastPath:
    return options if isinstance(options, FastPath) else FastPath.of(options)


def load_kwargs(options: FastPath | ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained``/``from_config``: the attention implementation, if asked."""
    attention = _fast(options).attention
    return {} if attention == "auto" else {"attn_implementation": attention}


def compile_config(mode: str) -> Any:
    """transformers' ``CompileConfig`` for ``mode``: static shapes, graph breaks allowed, any device."""
    from transformers import CompileConfig

    config_cls: Any = CompileConfig  # untyped vendor API
    config = config_cls(mode=mode, fullgraph=False, dynamic=False)
    config._compile_all_devices = True  # honour the request on CPU too (transformers skips CPU otherwise)
    return config


def generate_kwargs(options: FastPath | ExperimentConfig) -> dict[str, Any]:
    """Fields for each call's ``GenerationConfig`` (also valid as ``generate()`` kwargs); {} for eager."""
    fast = _fast(options)
    if fast.cache != "static":
        return {}  # DynamicCache: transformers never compiles it
    fields: dict[str, Any] = {"cache_implementation": "static"}
    if fast.max_cache_len is not None:
        fields["max_cache_len"] = fast.max_cache_len
    if fast.compiled:
        fields["compile_config"] = compile_config(fast.compile)
    else:  # off, or graph (whose loop never calls generate(): any other generate() call stays eager)
        fields["disable_compile"] = True  # else transformers auto-compiles a static cache on CUDA
    return fields


def prepare(model: Any, options: FastPath | ExperimentConfig) -> list[str]:
    """Set the fast path on ``model.generation_config`` (for any generate() call); returns warnings.

    Raises:
        ConfigError: ``compile: graph`` for a model the decode loop cannot run (``decode_loop``).
    """
    fast = _fast(options)
    if fast.graph:
        decode_loop.check_supported(model)
    for name, value in generate_kwargs(fast).items():
        setattr(model.generation_config, name, value)
    return _warnings(model, fast)


def settle_path(model: Any, options: FastPath) -> tuple[FastPath, dict[str, str], list[str]]:
    """The path ``model`` will run: ``options``, or eager generate() where ``compile: graph`` was a GPU
    default the decode loop cannot run (``FastPath.fallback``). Returns (path, the settings it changed, a
    warning saying why); a graph the user asked for is checked by ``prepare``, which refuses it.
    """
    if not (options.graph and options.fallback):
        return options, {}, []
    try:
        decode_loop.check_supported(model)
    except ConfigError as exc:
        eager = replace(options, cache="dynamic", compile="off", fallback=False)
        why = (
            f"compile: graph (a GPU default) cannot run {type(model).__name__} ({exc}); measured with "
            "generate() instead (cache: dynamic, compile: off)"
        )
        return eager, {"cache": "dynamic", "compile": "off"}, [why]
    return options, {}, []


def _devices(model: Any) -> set[str]:
    device_map = getattr(model, "hf_device_map", None) or {}
    return {str(d) for d in device_map.values()} or {str(getattr(model, "device", "cpu"))}


def _warnings(model: Any, fast: FastPath) -> list[str]:
    warnings = []
    if fast.cache == "static" and not _supports_cache(model):
        warnings.append(f"cache: static is ignored by {type(model).__name__} (it keeps its own cache)")
    if fast.graph and any(d.startswith("cpu") for d in _devices(model)):
        warnings.append("compile: graph on CPU: the decode loop runs uncaptured (CUDA graphs need a GPU)")
    if not fast.compiled:
        return warnings
    devices = _devices(model)
    if any(d.startswith("cpu") for d in devices):
        warnings.append(
            f"compile: {fast.compile} on CPU: the inductor build takes minutes and CUDA graphs do not apply"
        )
    if len(devices) > 1:
        warnings.append(
            f"compile: {fast.compile} with the model split over {len(devices)} devices: torch skips CUDA "
            "graphs for graphs spanning devices"
        )
    if not getattr(model, "_can_compile_fullgraph", False):
        warnings.append(f"compile: {type(model).__name__} is not marked fullgraph-compilable (graph breaks)")
    return warnings


def _supports_cache(model: Any) -> bool:
    supports = getattr(model, "_supports_default_dynamic_cache", None)
    return bool(supports()) if callable(supports) else True


def resolved_attention(model: Any) -> str:
    """The attention implementation the loaded model uses (e.g. ``sdpa``; ``eager`` when unset)."""
    impl = getattr(model.config, "_attn_implementation", None)
    return str(impl) if impl else "eager"


def warmup_groups(options: FastPath | ExperimentConfig, groups: Sequence[Sequence[T]]) -> list[Sequence[T]]:
    """The batches warm-up must run so no compile happens in a measured window: one per batch size.

    Empty without compile or graph. With either, the first batch of each distinct size (row count), in
    order; a warm-up that already ran the first batch needs only the rest (``[1:]``).
    """
    if not _fast(options).per_batch_size:
        return []
    seen: dict[int, Sequence[T]] = {}
    for group in groups:
        seen.setdefault(len(group), group)
    return list(seen.values())
