"""The transformers backend: ``TransformersBackend``, loading (pretrained or seeded-random) and generating.

``TransformersBackend`` implements ``protocols.Backend`` on ``AutoModelForCausalLM`` and ``generate()``; torch
and transformers are imported lazily (inside functions). Its helpers live beside it: ``hub`` (where files come
from), ``runtime`` (device, precision, versions), ``shape`` (facts and FLOPs shape), ``placement`` (several
GPUs), ``tokenizing`` (which tokenizer), ``generation`` (one generate() call's arguments and counts),
``tokens`` (padding, counting), ``timing`` (step timings), ``continuous`` (continuous batching).

Out of memory in ``generate()``: the failed call's memory is returned and an ``errors.OutOfMemoryError``
names the batch size and what to lower; the model stays loaded for a sweep's next, smaller point.
``release()`` drops the model (the runner calls it when a run it owns fails). Weight policy:

* ``pretrained``: a local folder with weight files, else the local HF cache, else the hub (skipped when
  ``HF_HUB_OFFLINE`` is set or the hub endpoint is unreachable: a cheap TCP check replaces huggingface_hub's
  ~23 s of retries on a machine without network).
* ``random``: seeded normal init of the architecture from the local folder's ``config.json``, else the shipped
  catalogue, else the hub config.
* ``auto``: pretrained when it can be had, else random from the shipped config with a loud warning (logged and
  put in ``LoadedModel.warnings``).

``inspect()`` reads the config alone (local ``config.json``, the shipped catalogue, the HF cache or hub) and
keeps it for ``load()``. Tokenizing needs no model (``tokenizing``: the model's own tokenizer, else with
random or auto weights the byte-level fallback, with a warning). Several GPUs (``device_map``, CUDA only,
needs ``accelerate``): see ``placement``. The loaded model's ``ModelShape`` comes from its config
(``shape.config_shape``) when its family is known there, else from walking its parameters.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

from llem_mlflow.backends import continuous, fastpath, generation
from llem_mlflow.backends.catalogue import shipped_config
from llem_mlflow.backends.fastpath import FastPath
from llem_mlflow.backends.hub import (
    UNAVAILABLE,
    find_config,
    forced_hub_offline,
    has_weight_files,
    hub_call,
    local_model_folder,
    one_line,
    pretrained_revision,
    unknown_model_error,
)
from llem_mlflow.backends.perplexity import PerplexityFigure, backend_quality, random_weights_note
from llem_mlflow.backends.placement import (
    ACCELERATE_HINT,
    Placement,
    cpu_build_warning,
    device_map_request,
    dispatch,
    input_device,
    meta_skeleton,
    plan_placement,
    random_build_device,
    visible_gpus,
)
from llem_mlflow.backends.runtime import (
    PRECISIONS,
    backend_versions,
    cuda_available,
    cuda_device_ids,
    dtype_kwargs,
    free_memory,
    is_out_of_memory,
    out_of_memory_error,
    resolve_device,
    resolve_precision,
    torch_dtype,
)
from llem_mlflow.backends.shape import config_facts, config_shape, model_shape
from llem_mlflow.backends.timing import StepTimer
from llem_mlflow.backends.tokenizing import TokenizerChoice
from llem_mlflow.backends.tokens import clean_generation_config
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import BackendError, ConfigError
from llem_mlflow.protocols import BatchStats, LoadedModel, ModelFacts, ModelShape

log = logging.getLogger(__name__)


def _build_random(config: Any, dtype: Any, device: str, seed: int, **kwargs: Any) -> Any:
    """Seeded normal init (config.initializer_range), built directly on ``device`` in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    auto_model: Any = AutoModelForCausalLM  # untyped vendor API
    torch.manual_seed(seed)
    with torch.device(device):
        return auto_model.from_config(config, **dtype_kwargs(dtype), **kwargs)


def _load_pretrained(source: str, dtype: Any, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, **dtype_kwargs(dtype), **kwargs)


class TransformersBackend:
    """``protocols.Backend`` on transformers' ``AutoModelForCausalLM`` and ``generate()``."""

    def __init__(
        self,
        model: str,
        weights: str = "auto",
        precision: str | None = None,
        device: str = "auto",
        seed: int = 42,
        device_map: str | dict[str, Any] | None = None,
        fast: FastPath | None = None,
        trust_remote_code: bool = False,
        batching: continuous.ContinuousBatching | None = None,
    ) -> None:
        if weights not in ("auto", "pretrained", "random"):
            raise ConfigError(f"weights must be auto, pretrained or random, not {weights!r}")
        if precision not in (None, "auto", *PRECISIONS):
            raise ConfigError(f"precision must be auto or one of {', '.join(PRECISIONS)}, not {precision!r}")
        if device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"device must be auto, cuda or cpu, not {device!r}")
        self._device_map = device_map_request(device_map, device)
        if self._device_map is not None and importlib.util.find_spec("accelerate") is None:
            raise BackendError(f"device_map needs the accelerate package: {ACCELERATE_HINT}")
        self.model_name = model
        self._fast = fast or FastPath()
        self._continuous = batching  # None: static batches through generate()
        self._remote_code = trust_remote_code  # passed to every transformers loader, False unless asked
        self._weights = weights
        self._precision = precision
        self._device_request = device
        self._seed = seed
        self._model: Any = None
        self._device = "cpu"
        self._cuda_indices: list[int] = []
        self._placement: Placement | None = None  # the checked device_map, computed by load()
        self._load_warnings: list[str] = []
        self._config: tuple[Any, str] | None = None  # (transformers config, source), fetched once
        self._tokens = TokenizerChoice(model, weights, trust_remote_code, lambda: self.inspect().vocab_size)
        self._start_s = 0.0
        self._step_timer: StepTimer | None = None  # kept across generate() calls (its CUDA events)

    @property
    def model(self) -> Any:
        """The loaded torch model (None before ``load()``)."""
        return self._model

    # -- config

    def _model_config(self) -> tuple[Any, str]:
        if self._config is None:
            self._config = find_config(self.model_name, self._remote_code)
        return self._config

    def inspect(self) -> ModelFacts:
        """Vocabulary size, context length and config source from the config alone (no weights, no GPU)."""
        config, source = self._model_config()
        return config_facts(config, source)

    # -- loading

    def load(self) -> LoadedModel:
        """Load or build the model on its device(s) (see the module docstring for the weight policy)."""
        self._device = self.planned_device()
        precision = resolve_precision(self._precision, self._device)
        dtype = torch_dtype(precision)
        self._start_s = time.perf_counter()
        self._load_warnings = []
        self._placement = self._plan(dtype)  # a wrong device_map fails here, before any weight loads
        try:
            model, weights, warnings = self._obtain(dtype)
            if self._placement is None:
                model = model.to(self._device)
        except RuntimeError as exc:  # CUDA OOM, driver errors, bad checkpoints
            raise BackendError(
                f"loading {self.model_name!r} on {self._device} ({precision}) failed: {exc}"
            ) from None
        model.eval()
        model.generation_config = clean_generation_config(model.generation_config)
        self._fast, settled, fell_back = fastpath.settle_path(model, self._fast)
        self._load_warnings.extend([*fell_back, *fastpath.prepare(model, self._fast)])
        self._model = model
        cuda_ids = cuda_device_ids(model)
        self._cuda_indices = [d.cuda_index for d in cuda_ids]
        self.synchronize()
        load_time_s = time.perf_counter() - self._start_s
        folder = local_model_folder(self.model_name)
        return LoadedModel(
            weights=weights,
            precision=precision,
            device=self._device,
            load_time_s=load_time_s,
            shape=self._shape(model),
            cuda_devices=cuda_ids,
            warnings=[*warnings, *self._load_warnings, *self._tokens.warnings],
            revision=pretrained_revision(self.model_name, folder, model) if weights == "pretrained" else None,
            attention=fastpath.resolved_attention(model),
            settled=settled,
        )

    def _shape(self, model: Any) -> ModelShape:
        """From the config when its family is known (as an out-of-process backend must), else the walk."""
        return config_shape(model.config) or model_shape(model)

    def planned_device(self) -> str:
        """The device ``load()`` will use, without loading; raises what ``load()`` would (e.g. a
        device_map where torch sees no GPU, device=cuda without CUDA). ``llem-mlflow config`` asks it too.
        """
        if self._device_map is None:
            return resolve_device(self._device_request)
        if not cuda_available():
            raise ConfigError(
                "device_map splits the model over CUDA GPUs, but torch sees none (CPU-only torch build, "
                "no GPU, or CUDA_VISIBLE_DEVICES hides them); run where torch sees the GPUs, or remove "
                "device_map"
            )
        return "cuda"

    def _plan(self, dtype: Any) -> Placement | None:
        """The checked device_map over the visible GPUs, from the architecture on the meta device."""
        if self._device_map is None:
            return None
        config, _ = self._model_config()
        placement = plan_placement(meta_skeleton(config, dtype), self._device_map, len(visible_gpus()), dtype)
        log.info("device_map %s: %s", self._device_map, placement.device_map)
        return placement

    def _obtain(self, dtype: Any) -> tuple[Any, str, list[str]]:
        """(model, weights actually used, warnings)."""
        folder = local_model_folder(self.model_name)
        if self._weights == "random":
            return self._random(dtype), "random", []
        try:
            return self._pretrained(folder, dtype), "pretrained", []
        except BackendError as exc:
            if self._weights == "pretrained":
                raise
            if folder is None and shipped_config(self.model_name) is None:
                raise unknown_model_error(self.model_name, str(exc)) from None
            warning = (
                f"weights=auto: pretrained weights for {self.model_name!r} are not available ({exc}). "
                "USING RANDOM WEIGHTS built from the model's config: energy and throughput reflect the "
                "architecture, but the generated text is meaningless. Set weights=random to accept this, "
                "or weights=pretrained to fail instead."
            )
            log.warning(warning)
            return self._random(dtype), "random", [warning]

    def _random(self, dtype: Any) -> Any:
        self._start_s = time.perf_counter()  # load time excludes a failed pretrained lookup
        config, _ = self._model_config()
        if self._placement is None:
            return _build_random(
                copy.deepcopy(config), dtype, self._device, self._seed, **self._load_kwargs()
            )
        return self._random_split(config, dtype, self._placement)

    def _random_split(self, config: Any, dtype: Any, placement: Placement) -> Any:
        """Seeded weights built where a one-GPU run builds them when they fit there, then dispatched."""
        import torch

        build_on = random_build_device(placement.weight_bytes)
        if build_on == "cpu":
            self._load_warnings.append(cpu_build_warning(placement.weight_bytes))
        model = _build_random(copy.deepcopy(config), dtype, build_on, self._seed, **self._load_kwargs())
        model = dispatch(model, placement.device_map, visible_gpus())
        if build_on == "cuda":
            torch.cuda.empty_cache()  # hand back the build's copies of the modules that moved to other GPUs
        return model

    def _fetched_config(self) -> dict[str, Any]:
        """``config=`` for from_pretrained when inspect() already read it from the folder, cache or hub."""
        if self._config is None or self._config[1] == "shipped config":
            return {}
        return {"config": self._config[0]}

    def _load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for from_config/from_pretrained from the fast-path options (attention)."""
        return {**fastpath.load_kwargs(self._fast), "trust_remote_code": self._remote_code}

    def _pretrained(self, folder: Path | None, dtype: Any) -> Any:
        kwargs = {**self._fetched_config(), **self._load_kwargs()}
        if self._placement is not None:
            devices = visible_gpus()
            kwargs["device_map"] = {name: devices[i] for name, i in self._placement.device_map.items()}
        remedy = "use weights=random" if self._weights == "pretrained" else None  # auto falls back itself
        if folder is not None:
            if not has_weight_files(folder):
                raise BackendError(
                    f"model folder {folder} has no weight files (*.safetensors or *.bin); add them "
                    f"(save_pretrained){f' or {remedy}' if remedy else ''}"
                )
            try:
                with forced_hub_offline():
                    return _load_pretrained(str(folder), dtype, **kwargs)
            except UNAVAILABLE as exc:
                raise BackendError(f"could not load the weights in {folder}: {one_line(exc)}") from None
        name = self.model_name
        load = lambda **kw: _load_pretrained(name, dtype, **kwargs, **kw)  # noqa: E731
        model, _ = hub_call(load, name, "pretrained weights", remedy)
        return model

    # -- tokenizing (needs no model: works before load())

    def tokenizer_name(self) -> str:
        """Which tokenizer ``tokenize`` uses, e.g. ``"gpt2 (HF cache)"`` or the byte-level fallback's name."""
        return self._tokens.get().name

    def tokenize(self, prompts: list[str], max_input_tokens: int) -> list[list[int]]:
        """Token ids of prompts, truncated to ``max_input_tokens``; works before ``load()``.

        The model's tokenizer adds its special tokens; the byte-level fallback adds none.
        """
        return self._tokens.tokenize(prompts, max_input_tokens)

    # -- generating

    def _require_model(self) -> Any:
        if self._model is None:
            raise BackendError("the model is not loaded; call load() before generate()")
        return self._model

    def generate(self, batch: list[list[int]], max_output_tokens: int) -> BatchStats:
        """Exactly ``max_output_tokens`` greedy new tokens per row, steps timed (``continuous``: untimed)."""
        model = self._require_model()
        if not batch or any(not row for row in batch):
            raise BackendError("generate() needs a non-empty batch of non-empty token id lists")
        pad = self._tokens.pad_token_id
        if self._continuous is not None:  # batching: continuous, through generate_batch
            return self._continuous.generate(model, batch, max_output_tokens, pad, self._device)
        device = input_device(model)
        if self._step_timer is None or self._step_timer.device != device:
            self._step_timer = StepTimer(device)
        timer = self._step_timer
        call = generation.prepare(model, batch, pad, max_output_tokens, self._fast, timer)
        out = self._generate_or_free(call.generate, timer, len(batch), call.padded_len, max_output_tokens)
        return generation.batch_stats(batch, out, call, timer)

    def warmup_groups(self, cfg: ExperimentConfig, groups: list[list[list[int]]]) -> list[list[list[int]]]:
        """With compile, the first batch of each batch size (``fastpath.warmup_groups``); else none."""
        return [list(group) for group in fastpath.warmup_groups(cfg, groups)]

    def _generate_or_free(
        self, generate: Any, timer: StepTimer, rows: int, width: int, max_output_tokens: int
    ) -> Any:
        """``generate()`` in inference mode; out of memory: free what it held, raise OutOfMemoryError."""
        import torch

        try:
            with torch.inference_mode():
                timer.start()
                return generate()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            detail = str(exc)  # text only: the exception holds the failed call's frames and tensors
        # Here the exception is gone, and with it the activations and KV cache of the failed call.
        free_memory()
        raise out_of_memory_error(detail, self._device, rows, width, max_output_tokens)

    def quality(self) -> PerplexityFigure | None:
        """Perplexity on the held-out text (``perplexity``), this backend's tokenizer; None before load()."""
        if self._model is None:
            return None
        device = str(input_device(self._model))
        return backend_quality(self._model, self._tokens.get(), self.inspect().context_length, device)

    def quality_note(self, weights: str | None = None) -> str | None:
        """A caveat for ``quality()`` when the weights are random: ``weights`` is ``LoadedModel.weights``
        (load() does not keep it, so weights=auto falling back is known only from it), else the request."""
        return random_weights_note((weights or self._weights) == "random")

    # -- housekeeping

    def release(self) -> None:
        """Drop the model (a continuous-batching manager stopped first), return its memory; repeatable."""
        if self._continuous is not None and self._model is not None:
            continuous.release(self._model)
        self._model = None
        self._step_timer = None
        self._placement = None
        self._cuda_indices = []
        free_memory()

    def synchronize(self) -> None:
        """Wait for queued CUDA work on every device the model uses; no-op on CPU."""
        if not self._cuda_indices:
            return
        import torch

        for index in self._cuda_indices:
            torch.cuda.synchronize(index)

    def versions(self) -> dict[str, str | None]:
        """torch, transformers and CUDA runtime versions."""
        return backend_versions()
