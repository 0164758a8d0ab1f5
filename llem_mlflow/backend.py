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

Several GPUs (``device_map``, CUDA only, needs ``accelerate``, imported lazily here and nowhere else):
``balanced`` is our own even split of the decoder layers over every visible GPU in contiguous blocks
(``balanced_device_map``, a pure function of the module names); ``auto`` and ``sequential`` are accelerate's
``infer_auto_device_map``; an explicit ``{module: gpu}`` is checked against the architecture on the meta
device before any weight loads (``plan_placement``). Pretrained weights load with
``from_pretrained(device_map=...)``; random ones are built as on one GPU (same seed, same weights, when they
fit on the current GPU; else on the CPU, with a warning) and then dispatched with accelerate's hooks.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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


# ---------------------------------------------------------------- several GPUs (device_map)

#: device_map strategies computed here (balanced) or by accelerate (auto, sequential).
MAP_STRATEGIES = ("auto", "balanced", "sequential")
_ACCELERATE_HINT = 'pip install "accelerate>=1.0" (or the extra: pip install "llem-mlflow[multi-gpu]")'
_NUMBERED = re.compile(r"^(.+)\.(\d+)$")
_FINAL_NORM = re.compile(r"(?:^|\.)(?:ln_f|norm|norm_f|final_norm|final_layer_norm|final_layernorm)$")
_LISTED = 8  # names shown in one error message


@dataclass(frozen=True)
class Placement:
    """Where a split model's modules go: ``{module name: CUDA index}``, and its weight bytes."""

    device_map: dict[str, int]
    weight_bytes: int


def gpu_index(value: object) -> int:
    """A device_map value as a CUDA index: an integer >= 0, ``"N"`` or ``"cuda:N"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = re.fullmatch(r"(?:cuda:)?(\d+)", value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            f"device_map: {value!r} is not a GPU; give each module a GPU index (0, 1, ...) or 'cuda:N' "
            "(the whole model stays on GPUs: no cpu or disk offload)"
        )
    return int(match.group(1))


def device_map_request(device_map: str | dict[str, Any] | None, device: str) -> str | dict[str, int] | None:
    """The checked device_map argument: a strategy name, ``{module: CUDA index}``, or None (one device)."""
    if device_map is None:
        return None
    if device == "cpu":
        raise ConfigError(
            "device_map splits the model over GPUs and cannot be used with device=cpu; "
            "set device=cuda (or auto), or remove device_map to run on one device"
        )
    if isinstance(device_map, str):
        if device_map not in MAP_STRATEGIES:
            raise ConfigError(
                f"device_map must be {', '.join(MAP_STRATEGIES)} or a {{module: gpu}} object, "
                f"not {device_map!r}"
            )
        return device_map
    if not device_map:
        raise ConfigError("device_map is an empty object; name each module's GPU, or use device_map=balanced")
    return {str(name): gpu_index(value) for name, value in device_map.items()}


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f" and {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def decoder_layers(module_names: Sequence[str]) -> tuple[str, list[str]]:
    """(name of the decoder layer list, its layers in order): the shallowest module with numbered children."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in module_names:
        match = _NUMBERED.match(name)
        if match:
            groups.setdefault(match.group(1), []).append((int(match.group(2)), name))
    if not groups:
        raise ConfigError(
            "device_map=balanced found no list of decoder layers (modules named <list>.<n>) in this model; "
            "use device_map=auto or an explicit {module: gpu} map"
        )
    parent = min(groups, key=lambda prefix: (prefix.count("."), -len(groups[prefix])))
    return parent, [name for _, name in sorted(groups[parent])]


def layer_devices(n_layers: int, n_devices: int) -> list[int]:
    """The device of each layer: contiguous blocks differing by at most one layer, larger blocks first."""
    base, extra = divmod(n_layers, n_devices)
    devices: list[int] = []
    for device in range(n_devices):
        devices += [device] * (base + (1 if device < extra else 0))
    return devices


def _side_device(name: str, after_layers: bool, head: str | None, tied_head: bool, last: int) -> int:
    """Device of a module beside the layers: head and final norm on the last device, the rest first."""
    if name == head:
        return 0 if tied_head else last  # a tied head shares the input embeddings' weight: keep them together
    return last if after_layers and _FINAL_NORM.search(name) else 0


def balanced_device_map(
    module_names: Sequence[str], n_devices: int, head: str | None = "lm_head", tied_head: bool = False
) -> dict[str, int]:
    """Our even split: ``{module name: device index}`` from the model's module names alone.

    ``module_names`` are ``model.named_modules()`` names in registration order. The decoder layers (the
    shallowest list of numbered modules) go over devices ``0..n_devices-1`` in contiguous blocks of equal size
    (earlier blocks one larger when it does not divide). Every other module beside the path to the layers
    goes to device 0 (embeddings, position/rotary embeddings, dropout), except the final norm (a ``norm`` or
    ``ln_f`` registered after the layers) and the output ``head``, which go to the last device; a head tied to
    the input embeddings (``tied_head``) stays on device 0 with them, so the shared weight exists once.
    """
    if n_devices < 1:
        raise ValueError("n_devices must be at least 1")
    layer_list, layers = decoder_layers(module_names)
    device_map = dict(zip(layers, layer_devices(len(layers), n_devices), strict=True))
    parts = layer_list.split(".")
    path = [".".join(parts[:depth]) for depth in range(len(parts))]  # "" (the model) to the list's parent
    on_path = {*path, layer_list}
    for parent in path:
        after_layers = False
        for child in (n for n in module_names if n and n.rpartition(".")[0] == parent):
            if child in on_path:
                after_layers = True
                continue
            device_map[child] = _side_device(child, after_layers, head, tied_head, n_devices - 1)
    return {name: device_map[name] for name in module_names if name in device_map}  # model order


def mapped_device(name: str, device_map: Mapping[str, int]) -> int | None:
    """The device of module or tensor ``name``: its longest covering key (``""`` covers everything)."""
    probe = name
    while probe not in device_map:
        if not probe:
            return None
        probe = probe.rpartition(".")[0]
    return device_map[probe]


def device_map_problems(
    device_map: Mapping[str, int],
    module_names: Sequence[str],
    tensor_names: Sequence[str],
    n_devices: int,
    tied_groups: Sequence[Sequence[str]] = (),
) -> list[str]:
    """What is wrong with ``device_map`` for a model with these modules and tensors, each said in a phrase."""
    known = set(module_names)
    problems = []
    unknown = [name for name in device_map if name and name not in known]
    if unknown:
        examples = [name for name in module_names if name and name.count(".") <= 1]
        problems.append(f"no module named {_names(unknown)} (modules include {_names(examples)})")
    absent = sorted({f"cuda:{index}" for index in device_map.values() if index >= n_devices})
    if absent:
        problems.append(f"{', '.join(absent)} not visible (torch sees {n_devices} GPU(s))")
    unplaced = [name for name in tensor_names if mapped_device(name, device_map) is None]
    owners = [name.rpartition(".")[0] or name for name in unplaced]
    if owners:
        problems.append(f"no GPU for {_names(list(dict.fromkeys(owners)))}: give them (or a parent) a GPU")
    for group in tied_groups:
        if len({mapped_device(name, device_map) for name in group}) > 1:
            problems.append(f"tied weights {' = '.join(group)} must be on one GPU")
    return problems


def _accelerate() -> Any:
    """The accelerate package, imported lazily; a BackendError saying how to install it when missing."""
    try:
        import accelerate
    except ImportError:
        raise BackendError(f"device_map needs the accelerate package: {_ACCELERATE_HINT}") from None
    return accelerate


def _skeleton(config: Any, dtype: Any) -> Any:
    """The architecture on the meta device: module names, sizes and ties, with no memory and no init."""
    import torch
    from transformers import AutoModelForCausalLM

    auto_model: Any = AutoModelForCausalLM  # untyped vendor API
    with torch.device("meta"):
        return auto_model.from_config(copy.deepcopy(config), **_dtype_kwargs(dtype))


def _module_name(model: Any, module: Any) -> str | None:
    return next((name for name, candidate in model.named_modules() if candidate is module), None)


def _head_facts(model: Any) -> tuple[str | None, bool]:
    """(name of the output head module, whether its weight is the input embeddings' weight)."""
    head = model.get_output_embeddings()
    if head is None:
        return None, False
    tied = getattr(head, "weight", None) is getattr(model.get_input_embeddings(), "weight", False)
    return _module_name(model, head), tied


def _accelerate_map(skeleton: Any, strategy: str, n_devices: int, dtype: Any) -> dict[str, int]:
    """accelerate's ``infer_auto_device_map`` over the visible GPUs (``auto`` balances their memory first)."""
    utils = _accelerate().utils
    no_split = sorted(getattr(skeleton, "_no_split_modules", None) or [])
    memory = {k: v for k, v in utils.get_max_memory().items() if isinstance(k, int) and k < n_devices}
    if strategy == "auto":
        memory = utils.get_balanced_memory(skeleton, memory, no_split_module_classes=no_split, dtype=dtype)
    raw = utils.infer_auto_device_map(skeleton, memory, no_split_module_classes=no_split, dtype=dtype)
    offloaded = [name for name, device in raw.items() if not isinstance(device, int)]
    if offloaded:
        raise BackendError(
            f"device_map={strategy}: the model does not fit in the free memory of {n_devices} GPU(s) "
            f"({_names(offloaded)} would go to cpu/disk); free GPU memory, use a lower precision or more GPUs"
        )
    return {name: int(device) for name, device in raw.items()}


def plan_placement(skeleton: Any, request: str | dict[str, int], n_devices: int, dtype: Any) -> Placement:
    """The checked ``{module: CUDA index}`` for ``request`` on a meta ``skeleton``; ConfigError if wrong."""
    module_names = [name for name, _ in skeleton.named_modules()]
    if isinstance(request, dict):
        device_map = dict(request)
    elif request == "balanced":
        device_map = balanced_device_map(module_names, n_devices, *_head_facts(skeleton))
    else:
        device_map = _accelerate_map(skeleton, request, n_devices, dtype)
    tensors = [n for n, _ in skeleton.named_parameters(remove_duplicate=False)]
    tensors += [n for n, _ in skeleton.named_buffers(remove_duplicate=False)]
    tied = _accelerate().utils.find_tied_parameters(skeleton)
    problems = device_map_problems(device_map, module_names, tensors, n_devices, tied)
    if problems:
        raise ConfigError(f"device_map: {'; '.join(problems)}")
    weight_bytes = sum(p.numel() * p.element_size() for p in skeleton.parameters())
    return Placement(device_map, int(weight_bytes))


def dispatch(model: Any, device_map: Mapping[str, int], devices: Sequence[Any]) -> Any:
    """Place ``model``'s modules with accelerate: module -> ``devices[index]``, with hooks when split.

    The hooks move each module's inputs to its device and the model's outputs back to the input embeddings'
    device; the generation cache is left where each layer put it (``_skip_keys_device_placement``).
    accelerate re-ties tied weights afterwards.
    """
    placed = {name: devices[index] for name, index in device_map.items()}
    embeddings = _module_name(model, model.get_input_embeddings())
    main = mapped_device(embeddings, device_map) if embeddings is not None else None
    skip = getattr(model, "_skip_keys_device_placement", None) or []
    return _accelerate().dispatch_model(
        model,
        device_map=placed,
        main_device=devices[main if main is not None else min(device_map.values())],
        skip_keys=[skip] if isinstance(skip, str) else sorted(skip),
        force_hooks=len(set(device_map.values())) > 1,  # by index: the same hooks whatever the devices are
    )


def visible_gpus() -> list[Any]:
    """The visible CUDA devices as accelerate and transformers take them in a device_map: 0..n-1."""
    import torch

    return list(range(torch.cuda.device_count()))


def random_build_device(weight_bytes: int) -> str:
    """Where to build split random weights: ``cuda`` (as one-GPU runs do) if they fit there, else ``cpu``."""
    import torch

    free_b, _ = torch.cuda.mem_get_info()
    return "cuda" if weight_bytes < 0.9 * free_b else "cpu"


def _cpu_build_warning(weight_bytes: int) -> str:
    warning = (
        f"the random weights ({weight_bytes / 1e9:.1f} GB) do not fit in the free memory of the current GPU, "
        "so they were built on the CPU: the same seed gives other weights than a one-GPU run (energy and "
        "speed are comparable, generated tokens are not)"
    )
    log.warning(warning)
    return warning


def input_device(model: Any) -> Any:
    """Where generate()'s inputs go: the input embeddings' device (a split model's first stage)."""
    weight = getattr(model.get_input_embeddings(), "weight", None)
    return weight.device if weight is not None else next(model.parameters()).device


# ---------------------------------------------------------------- step timing


class StepTimer:
    """A logits processor timing generate()'s prefill and every decode step, never waiting on the device.

    Pass it in ``logits_processor=LogitsProcessorList([timer])``: generate() calls it once per new
    token, right after the forward pass that produced that token's logits, so its first call marks
    the end of the prefill and each later call the end of one decode step. ``start()`` marks the
    beginning, right before generate(). It returns the scores unchanged (the tokens are the same as
    without it).

    On CUDA each mark records a ``torch.cuda.Event(enable_timing=True)`` on the current stream (as of
    ``start()``) of the timer's device, the one generate() hands the scores over on: the input device, as
    generate() copies the logits to ``input_ids.device``. For a model split over GPUs that copy makes this
    stream wait for the last stage, so each mark follows the whole step; should the scores arrive on another
    device, this stream is first made to wait for that device's stream. Nothing synchronizes or copies to the
    host. The events are created by ``reserve()`` before generate() and kept for the next call, so a timer
    reused across batches creates none inside a measured window. Read ``intervals_s()`` only after the
    device has finished the work (e.g. after the output's ``.tolist()``): it waits for the last event, then
    reads ``elapsed_time`` between consecutive events. On CPU the marks are ``time.perf_counter()`` (ops
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
        if self._cuda and scores.device != self.device:
            self._follow(scores.device)
        self._mark()
        return scores

    def _follow(self, device: Any) -> None:
        """Order the timing stream after the work queued on ``device`` (no host wait)."""
        import torch

        self._stream.wait_stream(torch.cuda.current_stream(device))

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
        device_map: str | dict[str, Any] | None = None,
    ) -> None:
        if weights not in ("auto", "pretrained", "random"):
            raise ConfigError(f"weights must be auto, pretrained or random, not {weights!r}")
        if precision not in (None, "auto", *_PRECISIONS):
            raise ConfigError(f"precision must be auto or one of {', '.join(_PRECISIONS)}, not {precision!r}")
        if device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"device must be auto, cuda or cpu, not {device!r}")
        self._device_map = device_map_request(device_map, device)
        if self._device_map is not None and importlib.util.find_spec("accelerate") is None:
            raise BackendError(f"device_map needs the accelerate package: {_ACCELERATE_HINT}")
        self.model_name = model
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
        """Load or build the model on its device(s) (see the module docstring for the weight policy)."""
        self._device = self._resolve_device()
        precision = resolve_precision(self._precision, self._device)
        dtype = _torch_dtype(precision)
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
            warnings=[*warnings, *self._load_warnings, *self._tokenizer_warnings],
            revision=pretrained_revision(self.model_name, folder, model) if weights == "pretrained" else None,
        )

    def _resolve_device(self) -> str:
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
        placement = plan_placement(_skeleton(config, dtype), self._device_map, len(visible_gpus()), dtype)
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
        if self._placement is None:
            return _build_random(copy.deepcopy(config), dtype, self._device, self._seed)
        return self._random_split(config, dtype, self._placement)

    def _random_split(self, config: Any, dtype: Any, placement: Placement) -> Any:
        """Seeded weights built where a one-GPU run builds them when they fit there, then dispatched."""
        import torch

        build_on = random_build_device(placement.weight_bytes)
        if build_on == "cpu":
            self._load_warnings.append(_cpu_build_warning(placement.weight_bytes))
        model = _build_random(copy.deepcopy(config), dtype, build_on, self._seed)
        model = dispatch(model, placement.device_map, visible_gpus())
        if build_on == "cuda":
            torch.cuda.empty_cache()  # hand back the build's copies of the modules that moved to other GPUs
        return model

    def _fetched_config(self) -> dict[str, Any]:
        """``config=`` for from_pretrained when inspect() already read it from the folder, cache or hub."""
        if self._config is None or self._config[1] == "shipped config":
            return {}
        return {"config": self._config[0]}

    def _pretrained(self, folder: Path | None, dtype: Any) -> Any:
        kwargs = self._fetched_config()
        if self._placement is not None:
            devices = visible_gpus()
            kwargs["device_map"] = {name: devices[i] for name, i in self._placement.device_map.items()}
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
        device = input_device(model)
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
