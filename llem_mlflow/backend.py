"""The transformers model backend: loading (pretrained or seeded-random), tokenizing, generating.

This is the only module that imports torch and transformers, always lazily (inside functions).
``TransformersBackend`` implements ``protocols.Backend``. Weight policy:

* ``pretrained``: a local folder with weight files, else the local HF cache, else the hub
  (skipped when ``HF_HUB_OFFLINE`` is set or the hub endpoint is unreachable: a cheap TCP check
  replaces huggingface_hub's ~23 s of retries on a machine without network).
* ``random``: seeded normal init of the architecture from the local folder's ``config.json``,
  else the shipped catalogue, else the hub config.
* ``auto``: pretrained when it can be had, else random from the shipped config with a loud
  warning (logged and put in ``LoadedModel.warnings``).

``inspect()`` reads the config alone (local folder ``config.json``, else the shipped catalogue, else
the HF cache or hub) and keeps it, so ``load()`` does not fetch it again. Tokenizing needs no model:
the model's own tokenizer (local folder, HF cache, or hub when reachable); when it cannot be had and
weights are ``random`` or ``auto``, the byte-level fallback of ``llem_mlflow.tokenizers`` with a
warning; with ``pretrained``, a ``BackendError``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llem_mlflow.catalogue import context_length, shipped_config, shipped_models
from llem_mlflow.errors import BackendError, ConfigError
from llem_mlflow.protocols import BatchStats, CudaDeviceId, LoadedModel, ModelFacts, ModelShape
from llem_mlflow.tokenizers import BYTE_FALLBACK_NAME, ByteTokenizer, ModelTokenizer, TextTokenizer

log = logging.getLogger(__name__)

_TRUTHY = {"1", "true", "yes", "on"}
_PRECISIONS = ("fp32", "fp16", "bf16")
_WEIGHT_GLOBS = ("*.safetensors", "*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_HUB_CHECK_TIMEOUT_S = 3.0
_SNAPSHOT_COMMIT = re.compile(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")
#: Exceptions that mean "these weights/files cannot be had" (missing, offline, gated, bad id).
_UNAVAILABLE = (OSError, ValueError, KeyError)


# ---------------------------------------------------------------- environment and versions


def cuda_available() -> bool:
    """True when torch is installed and sees at least one CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def backend_versions() -> dict[str, str | None]:
    """torch, transformers and CUDA runtime versions (None for what is not installed)."""
    cuda_runtime: str | None = None
    try:
        import torch

        cuda_runtime = torch.version.cuda
    except ImportError:
        pass
    return {
        "torch": _package_version("torch"),
        "transformers": _package_version("transformers"),
        "cuda_runtime": cuda_runtime,
    }


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) asks for no network."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUTHY
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout_s: float = _HUB_CHECK_TIMEOUT_S) -> bool:
    """Cheap check that the hub endpoint accepts a TCP connection within ``timeout_s``.

    With a proxy configured the direct check says nothing, so the hub is assumed reachable.
    """
    if hub_offline():
        return False
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(_hub_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    result: list[bool] = []

    def _connect() -> None:  # getaddrinfo has no timeout of its own: run it in a thread
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=_connect, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return bool(result and result[0])


# ---------------------------------------------------------------- device and precision


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu"
    available = cuda_available()
    if requested == "cuda" and not available:
        raise BackendError(
            "device=cuda was requested but torch sees no CUDA device (CPU-only torch build, no GPU, "
            "or CUDA_VISIBLE_DEVICES hides it); install a CUDA build of torch or use device=cpu"
        )
    return "cuda" if available else "cpu"


def resolve_precision(requested: str | None, device: str) -> str:
    if requested not in (None, "auto"):
        return requested
    if device == "cpu":
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """``dtype=`` on transformers >= 4.56, ``torch_dtype=`` before."""
    version = _major_minor(_package_version("transformers") or "0")
    return {"dtype": dtype} if version >= (4, 56) else {"torch_dtype": dtype}


def _major_minor(version: str) -> tuple[int, int]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 2:
        parts.append(0)
    return parts[0], parts[1]


# ---------------------------------------------------------------- model sources


def local_model_folder(model: str) -> Path | None:
    """The folder when ``model`` names a local directory with ``config.json``, else None (a hub id)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    if not (folder / "config.json").is_file():
        raise BackendError(
            f"model folder {folder} has no config.json; point model= at a transformers model folder "
            "(config.json, optional weights and tokenizer files) or use a hub id"
        )
    return folder


def _has_weight_files(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in _WEIGHT_GLOBS)


def _unknown_model_error(model: str, reason: str) -> BackendError:
    names = ", ".join(shipped_models())
    return BackendError(
        f"cannot get an architecture for model {model!r}: {reason}. Use a local model folder with "
        f"config.json, make the hub reachable (or its HF cache available), or pick a shipped model: {names}"
    )


def _config_from_dict(config: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    values = dict(config)
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **values)


@contextmanager
def _forced_hub_offline() -> Iterator[None]:
    """Make huggingface_hub (and old transformers) offline for a moment: no request, no retry.

    Needed because some transformers versions (5.17) look up ``adapter_config.json`` on the hub
    even with ``local_files_only=True``, retrying for ~23 s when there is no network.
    """
    import huggingface_hub.constants as hub_constants
    from transformers.utils import hub as transformers_hub

    saved_hub = hub_constants.HF_HUB_OFFLINE
    saved_old = getattr(transformers_hub, "_is_offline_mode", None)
    hub_constants.HF_HUB_OFFLINE = True
    if saved_old is not None:
        setattr(transformers_hub, "_is_offline_mode", True)  # noqa: B010 (absent from new stubs)
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved_hub
        if saved_old is not None:
            setattr(transformers_hub, "_is_offline_mode", saved_old)  # noqa: B010


def _cache_call(load: Any, offline: bool) -> Any:
    """``load(local_files_only=True)``, with the hub forced offline when it cannot be used."""
    if not offline:
        return load(local_files_only=True)
    with _forced_hub_offline():
        return load(local_files_only=True)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _hub_call(load: Any, model: str, what: str, remedy: str | None = None) -> tuple[Any, str]:
    """``load(local_files_only=...)``: the HF cache first, then the hub when allowed and reachable.

    Returns the result and where it came from (``"HF cache"`` or ``"hub"``). ``remedy`` (e.g.
    ``"use weights=random"``) ends each error message; pass it only when that option is not in effect.
    """
    offline_flag = hub_offline()
    offline = offline_flag or not hub_reachable()
    try:
        return _cache_call(load, offline), "HF cache"
    except _UNAVAILABLE as exc:
        cache_error = _one_line(exc)
    tail = f", or {remedy}" if remedy else ""
    if offline_flag:
        raise BackendError(
            f"{what} for {model!r} not in the local HF cache and HF_HUB_OFFLINE is set ({cache_error}); "
            f"download it once with network or unset HF_HUB_OFFLINE{tail}"
        )
    if offline:
        raise BackendError(
            f"{what} for {model!r} not in the local HF cache and the hub ({_hub_endpoint()}) is unreachable; "
            "check the network (or HF_ENDPOINT/HTTPS_PROXY) or pre-fill the HF cache and set HF_HUB_OFFLINE=1"
            f"{tail}"
        )
    try:
        return load(local_files_only=False), "hub"
    except _UNAVAILABLE as exc:
        raise BackendError(
            f"could not download {what} for {model!r} from the hub: {_one_line(exc)}. Check the model id, "
            f"access rights (HF_TOKEN for gated models) and network{tail}"
        ) from None


def find_config(model: str) -> tuple[Any, str]:
    """(transformers config, source): folder config.json, else shipped config, else HF cache / hub."""
    from transformers import AutoConfig

    folder = local_model_folder(model)
    if folder is not None:
        try:
            with _forced_hub_offline():
                return AutoConfig.from_pretrained(str(folder)), "local folder"
        except _UNAVAILABLE as exc:
            raise BackendError(f"could not read {folder / 'config.json'}: {_one_line(exc)}") from None
    shipped = shipped_config(model)
    if shipped is not None:
        return _config_from_dict(shipped), "shipped config"
    try:
        config, where = _hub_call(lambda **kw: AutoConfig.from_pretrained(model, **kw), model, "the config")
    except BackendError as exc:
        raise _unknown_model_error(model, str(exc)) from None
    return config, where


def config_facts(config: Any, source: str) -> ModelFacts:
    """Vocabulary size and context length of a transformers config (its text part for multimodal ones)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    values = text.to_dict()
    vocab = values.get("vocab_size")
    if not isinstance(vocab, int) or vocab <= 0:
        raise BackendError(f"the model config ({source}) has no vocab_size; use a causal LM config")
    return ModelFacts(vocab_size=vocab, context_length=context_length(values), config_source=source)


def _build_random(config: Any, dtype: Any, device: str, seed: int) -> Any:
    """Seeded normal init (config.initializer_range), built directly on ``device`` in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM

    auto_model: Any = AutoModelForCausalLM  # untyped vendor API
    torch.manual_seed(seed)
    with torch.device(device):
        return auto_model.from_config(config, **_dtype_kwargs(dtype))


def _load_pretrained(source: str, dtype: Any, **kwargs: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(source, **_dtype_kwargs(dtype), **kwargs)


def _cached_file(model: str, filename: str) -> str | None:
    """Path of ``filename`` of hub repo ``model`` in the local HF cache, else None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(model, filename)
    except (ValueError, OSError):  # not a valid repo id
        return None
    return path if isinstance(path, str) else None


def pretrained_revision(model_name: str, folder: Path | None, model: Any) -> str | None:
    """Commit hash of loaded pretrained weights, None when unknown.

    The config's ``_commit_hash`` (transformers < 5), else the ``snapshots/<commit>`` part of the HF cache
    path the model came from (the folder itself, or the cached ``config.json`` of the hub id).
    """
    commit = getattr(model.config, "_commit_hash", None)
    if isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{40}", commit):
        return commit
    path = str(folder.resolve()) if folder is not None else _cached_file(model_name, "config.json")
    match = _SNAPSHOT_COMMIT.search(path or "")
    return match.group(1) if match else None


def load_model_tokenizer(model: str) -> ModelTokenizer:
    """The model's own tokenizer: the local folder's files, else the HF cache, else the hub if reachable."""
    from transformers import AutoTokenizer

    folder = local_model_folder(model)
    if folder is None:
        load = lambda **kw: AutoTokenizer.from_pretrained(model, **kw)  # noqa: E731
        tokenizer, where = _hub_call(load, model, "the tokenizer")
        return ModelTokenizer(tokenizer, f"{model} ({where})")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise BackendError(f"model folder {folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    try:
        with _forced_hub_offline():
            return ModelTokenizer(AutoTokenizer.from_pretrained(str(folder)), f"{model} (local folder)")
    except _UNAVAILABLE as exc:
        raise BackendError(f"could not load the tokenizer in {folder}: {_one_line(exc)}") from None


# ---------------------------------------------------------------- model facts


def model_shape(model: Any) -> ModelShape:
    """FLOPs-relevant sizes: 2-D weights outside embeddings and the LM head, head size, widths."""
    import torch

    head = model.get_output_embeddings()
    head_weight = head.weight if head is not None else None
    excluded = {id(head_weight)} if head_weight is not None else set()
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            excluded.add(id(module.weight))
    body = sum(p.numel() for p in model.parameters() if p.dim() == 2 and id(p) not in excluded)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return ModelShape(
        body_matmul_params=int(body),
        lm_head_params=int(head_weight.numel()) if head_weight is not None else 0,
        n_layers=int(config.num_hidden_layers),
        attn_dim=int(n_heads * head_dim),
        vocab_size=int(config.vocab_size),
    )


def _nvml_uuid(raw: Any) -> str | None:
    if raw is None:
        return None
    text = str(raw)
    return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"


def _pci_bus_id(props: Any) -> str | None:
    bus = getattr(props, "pci_bus_id", None)
    dev = getattr(props, "pci_device_id", None)
    if bus is None or dev is None:
        return None
    domain = getattr(props, "pci_domain_id", 0) or 0
    return f"{int(domain):08X}:{int(bus):02X}:{int(dev):02X}.0"


def cuda_device_ids(model: Any) -> list[CudaDeviceId]:
    """The CUDA devices holding ``model``'s parameters, identified as NVML spells them."""
    import torch

    indices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    ids = []
    for index in indices:
        props = torch.cuda.get_device_properties(index)
        ids.append(CudaDeviceId(index, _nvml_uuid(getattr(props, "uuid", None)), _pci_bus_id(props)))
    return ids


def _clean_generation_config(original: Any) -> Any:
    """A fresh GenerationConfig keeping only the special token ids of ``original``.

    A checkpoint's ``generation_config.json`` (max_length, sampling settings) would otherwise be
    merged into every generate() call and trigger warnings; the workload sets everything itself.
    """
    from transformers import GenerationConfig

    config_cls: Any = GenerationConfig  # untyped vendor API
    keep = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    return config_cls(**{name: getattr(original, name, None) for name in keep})


def _as_id_set(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def count_output_tokens(new_rows: list[list[int]], eos_ids: set[int]) -> int:
    """Per row: new tokens up to and including the first EOS, else all of them."""
    total = 0
    for row in new_rows:
        stop = next((i + 1 for i, tok in enumerate(row) if tok in eos_ids), len(row))
        total += stop
    return total


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Left-padded ids and the matching attention mask (1 = real token)."""
    width = max(len(row) for row in batch)
    ids = [[pad_id] * (width - len(row)) + row for row in batch]
    mask = [[0] * (width - len(row)) + [1] * len(row) for row in batch]
    return ids, mask


# ---------------------------------------------------------------- step timing


class StepTimer:
    """A logits processor timing generate()'s prefill and every decode step, never waiting on the device.

    Pass it in ``logits_processor=LogitsProcessorList([timer])``: generate() calls it once per new
    token, right after the forward pass that produced that token's logits, so its first call marks
    the end of the prefill and each later call the end of one decode step. ``start()`` marks the
    beginning, right before generate(). It returns the scores unchanged (the tokens are the same as
    without it).

    On CUDA each mark records a ``torch.cuda.Event(enable_timing=True)`` on the device's current
    stream (as of ``start()``); nothing synchronizes or copies to the host. The events are created by
    ``reserve()`` before generate() and kept for the next call, so a timer reused across batches
    creates none inside a measured window. Read ``intervals_s()`` only after the device has finished
    the work (e.g. after the output's ``.tolist()``): it waits for the last event, then reads
    ``elapsed_time`` between consecutive events. On CPU the marks are ``time.perf_counter()`` (ops
    run synchronously there). Duck-typed (transformers' ``LogitsProcessorList`` only calls
    ``processor(input_ids, scores)``), so this module imports transformers lazily.
    """

    def __init__(self, device: Any) -> None:
        self.device = device
        self._cuda = getattr(device, "type", str(device)) == "cuda"
        self._events: list[Any] = []
        self._times: list[float] = []
        self._stream: Any = None
        self._calls = 0

    @property
    def marks(self) -> int:
        """Marks taken since ``start()``: the start plus one per generated token."""
        return self._calls

    def reserve(self, marks: int) -> None:
        """Create the CUDA events for ``marks`` marks now (they are kept); a no-op on CPU."""
        if not self._cuda:
            return
        import torch

        event_cls: Any = torch.cuda.Event  # untyped vendor API
        while len(self._events) < marks:
            self._events.append(event_cls(enable_timing=True))

    def _mark(self) -> None:
        if self._cuda:
            if self._calls >= len(self._events):
                self.reserve(self._calls + 1)
            self._events[self._calls].record(self._stream)
        else:
            self._times.append(time.perf_counter())
        self._calls += 1

    def start(self) -> None:
        """Mark the beginning (right before generate()); forgets earlier marks."""
        self._calls = 0
        self._times.clear()
        if self._cuda:
            import torch

            self._stream = torch.cuda.current_stream(self.device)
        self._mark()

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Mark the end of the forward pass that produced ``scores``; return them unchanged."""
        self._mark()
        return scores

    # LogitsProcessorList calls inspect.signature(processor.__call__) at every step; a signature
    # stored on the function makes that lookup about 3x cheaper (no code-object parsing).
    __call__.__signature__ = inspect.signature(__call__)  # type: ignore[attr-defined]

    def intervals_s(self) -> list[float]:
        """Seconds between consecutive marks (prefill first, then each decode step)."""
        if self._calls < 2:
            return []
        if not self._cuda:
            return [b - a for a, b in zip(self._times, self._times[1:], strict=False)]
        events = self._events[: self._calls]
        events[-1].synchronize()  # a no-op once the output was copied to the host
        return [float(a.elapsed_time(b)) / 1000.0 for a, b in zip(events, events[1:], strict=False)]


def step_timings(intervals: list[float], new_tokens: int) -> tuple[float | None, tuple[float, ...]]:
    """(prefill_s, decode_step_s) from a StepTimer's intervals for ``new_tokens`` generated tokens.

    Extra marks past ``new_tokens`` (a step generate() ran and then undid) are dropped; fewer marks
    than tokens means the timer missed steps, and nothing is reported rather than a wrong number.
    """
    if new_tokens < 1 or len(intervals) < new_tokens:
        return None, ()
    return intervals[0], tuple(intervals[1:new_tokens])


# ---------------------------------------------------------------- the backend


class TransformersBackend:
    """``protocols.Backend`` on transformers' ``AutoModelForCausalLM`` and ``generate()``."""

    def __init__(
        self,
        model: str,
        weights: str = "auto",
        precision: str | None = None,
        device: str = "auto",
        seed: int = 42,
    ) -> None:
        if weights not in ("auto", "pretrained", "random"):
            raise ConfigError(f"weights must be auto, pretrained or random, not {weights!r}")
        if precision not in (None, "auto", *_PRECISIONS):
            raise ConfigError(f"precision must be auto or one of {', '.join(_PRECISIONS)}, not {precision!r}")
        if device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"device must be auto, cuda or cpu, not {device!r}")
        self.model_name = model
        self._weights = weights
        self._precision = precision
        self._device_request = device
        self._seed = seed
        self._model: Any = None
        self._device = "cpu"
        self._cuda_indices: list[int] = []
        self._config: tuple[Any, str] | None = None  # (transformers config, source), fetched once
        self._tokenizer: TextTokenizer | None = None
        self._tokenizer_error: str | None = None
        self._tokenizer_warnings: list[str] = []
        self._start_s = 0.0
        self._step_timer: StepTimer | None = None  # kept across generate() calls (its CUDA events)

    @property
    def model(self) -> Any:
        """The loaded torch model (None before ``load()``)."""
        return self._model

    # -- config

    def _model_config(self) -> tuple[Any, str]:
        if self._config is None:
            self._config = find_config(self.model_name)
        return self._config

    def inspect(self) -> ModelFacts:
        """Vocabulary size, context length and config source from the config alone (no weights, no GPU)."""
        config, source = self._model_config()
        return config_facts(config, source)

    # -- loading

    def load(self) -> LoadedModel:
        """Load or build the model on its device (see the module docstring for the weight policy)."""
        self._device = resolve_device(self._device_request)
        precision = resolve_precision(self._precision, self._device)
        dtype = _torch_dtype(precision)
        self._start_s = time.perf_counter()
        try:
            model, weights, warnings = self._obtain(dtype)
            model = model.to(self._device)
        except RuntimeError as exc:  # CUDA OOM, driver errors, bad checkpoints
            raise BackendError(
                f"loading {self.model_name!r} on {self._device} ({precision}) failed: {exc}"
            ) from None
        model.eval()
        model.generation_config = _clean_generation_config(model.generation_config)
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
            shape=model_shape(model),
            cuda_devices=cuda_ids,
            warnings=[*warnings, *self._tokenizer_warnings],
            revision=pretrained_revision(self.model_name, folder, model) if weights == "pretrained" else None,
        )

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
                raise _unknown_model_error(self.model_name, str(exc)) from None
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
        return _build_random(copy.deepcopy(config), dtype, self._device, self._seed)

    def _fetched_config(self) -> dict[str, Any]:
        """``config=`` for from_pretrained when inspect() already read it from the folder, cache or hub."""
        if self._config is None or self._config[1] == "shipped config":
            return {}
        return {"config": self._config[0]}

    def _pretrained(self, folder: Path | None, dtype: Any) -> Any:
        kwargs = self._fetched_config()
        remedy = "use weights=random" if self._weights == "pretrained" else None  # auto falls back itself
        if folder is not None:
            if not _has_weight_files(folder):
                raise BackendError(
                    f"model folder {folder} has no weight files (*.safetensors or *.bin); add them "
                    f"(save_pretrained){f' or {remedy}' if remedy else ''}"
                )
            try:
                with _forced_hub_offline():
                    return _load_pretrained(str(folder), dtype, **kwargs)
            except _UNAVAILABLE as exc:
                raise BackendError(f"could not load the weights in {folder}: {_one_line(exc)}") from None
        name = self.model_name
        load = lambda **kw: _load_pretrained(name, dtype, **kwargs, **kw)  # noqa: E731
        model, _ = _hub_call(load, name, "pretrained weights", remedy)
        return model

    # -- tokenizing (needs no model: works before load())

    def _get_tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None and self._tokenizer_error is None:
            try:
                self._tokenizer = self._resolve_tokenizer()
            except BackendError as exc:
                self._tokenizer_error = str(exc)
        if self._tokenizer is None:
            raise BackendError(str(self._tokenizer_error))
        return self._tokenizer

    def _resolve_tokenizer(self) -> TextTokenizer:
        """The model's own tokenizer, else (weights random or auto) the byte-level fallback."""
        name = self.model_name
        try:
            return load_model_tokenizer(name)
        except BackendError as exc:
            reason = str(exc)
        if self._weights == "pretrained":
            raise BackendError(
                f"no tokenizer for model {name!r}: {reason}. Use dataset=synthetic (token ids, no tokenizer "
                "needed), provide the tokenizer files, or use weights=random (byte-level fallback tokenizer)"
            )
        try:
            fallback = ByteTokenizer(self.inspect().vocab_size)
        except BackendError as exc:
            raise BackendError(
                f"no tokenizer for model {name!r} ({reason}), and {exc}; use dataset=synthetic "
                "(token ids, no tokenizer needed) or provide the model's tokenizer files"
            ) from None
        warning = (
            f"no tokenizer for model {name!r} ({reason}); weights={self._weights}: using the "
            f"{BYTE_FALLBACK_NAME}, no special tokens. Prompt token counts are UTF-8 byte counts, "
            "not what the model's own tokenizer would give."
        )
        log.warning(warning)
        self._tokenizer_warnings.append(warning)
        return fallback

    def tokenizer_name(self) -> str:
        """Which tokenizer ``tokenize`` uses, e.g. ``"gpt2 (HF cache)"`` or the byte-level fallback's name."""
        return self._get_tokenizer().name

    def tokenize(self, prompts: list[str], max_input_tokens: int) -> list[list[int]]:
        """Token ids of prompts, truncated to ``max_input_tokens``; works before ``load()``.

        The model's tokenizer adds its special tokens; the byte-level fallback adds none.
        """
        rows = self._get_tokenizer().encode(prompts, max_input_tokens)
        for index, row in enumerate(rows):
            if not row:
                raise BackendError(f"prompt {index} is empty after tokenization; remove empty prompts")
        return rows

    # -- generating

    def _require_model(self) -> Any:
        if self._model is None:
            raise BackendError("the model is not loaded; call load() before generate()")
        return self._model

    def _special_ids(self) -> tuple[int, set[int]]:
        """(pad id, EOS ids): pad = tokenizer pad, else config pad, else first EOS, else 0."""
        gen = self._model.generation_config
        eos_ids = _as_id_set(gen.eos_token_id) or _as_id_set(
            getattr(self._model.config, "eos_token_id", None)
        )
        for candidate in (
            self._tokenizer.pad_token_id if self._tokenizer is not None else None,
            gen.pad_token_id,
            getattr(self._model.config, "pad_token_id", None),
        ):
            if isinstance(candidate, int):
                return candidate, eos_ids
        return (min(eos_ids) if eos_ids else 0), eos_ids

    def _generation_config(self, max_output_tokens: int, pad_id: int, eos_ids: set[int]) -> Any:
        from transformers import GenerationConfig

        config_cls: Any = GenerationConfig  # untyped vendor API
        return config_cls(
            max_new_tokens=max_output_tokens,
            min_new_tokens=max_output_tokens,
            do_sample=False,
            num_beams=1,
            temperature=1.0,
            top_k=50,
            top_p=1.0,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids) if eos_ids else None,
        )

    def generate(self, batch: list[list[int]], max_output_tokens: int) -> BatchStats:
        """Greedy, left-padded generation of exactly ``max_output_tokens`` new tokens per row.

        The prefill and every decode step are timed by a ``StepTimer`` (CUDA events, no host sync per
        token) into ``BatchStats.prefill_s`` and ``decode_step_s``.
        """
        import torch
        from transformers import LogitsProcessorList

        model = self._require_model()
        if not batch or any(not row for row in batch):
            raise BackendError("generate() needs a non-empty batch of non-empty token id lists")
        pad_id, eos_ids = self._special_ids()
        ids, mask = left_pad(batch, pad_id)
        device = next(model.parameters()).device
        input_ids = torch.tensor(ids, dtype=torch.long, device=device)
        attention_mask = torch.tensor(mask, dtype=torch.long, device=device)
        config = self._generation_config(max_output_tokens, pad_id, eos_ids)
        processors: Any = LogitsProcessorList  # untyped vendor API
        if self._step_timer is None or self._step_timer.device != device:
            self._step_timer = StepTimer(device)
        timer = self._step_timer
        timer.reserve(max_output_tokens + 1)  # CUDA events made once (warm-up), reused per batch
        with torch.inference_mode():
            timer.start()
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                logits_processor=processors([timer]),
            )
        padded_len = input_ids.shape[1]
        new_rows = out[:, padded_len:].tolist()  # waits for the device: every timing event is done
        new_tokens = int(out.shape[1] - padded_len)
        prefill_s, decode_step_s = step_timings(timer.intervals_s(), new_tokens)
        if prefill_s is None and new_tokens > 0:
            log.warning("%d step marks for %d new tokens: step timings dropped", timer.marks - 1, new_tokens)
        return BatchStats(
            input_tokens=sum(len(row) for row in batch),
            output_tokens=count_output_tokens(new_rows, eos_ids),
            padded_input_len=int(padded_len),
            new_tokens=new_tokens,
            batch_size=len(batch),
            prefill_s=prefill_s,
            decode_step_s=decode_step_s,
        )

    # -- housekeeping

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
