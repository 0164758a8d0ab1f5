"""Several GPUs: where each module of a model split with ``device_map`` goes, and putting it there.

Pure functions of module names (``balanced_device_map``: our even split of the decoder layers over every
visible GPU in contiguous blocks; ``device_map_problems``: what is wrong with an explicit map) and the
accelerate-backed ones (``plan_placement`` on the architecture on the meta device, before any weight loads:
``auto``/``sequential`` are accelerate's ``infer_auto_device_map``; ``dispatch``: accelerate's hooks).
Pretrained weights load with ``from_pretrained(device_map=...)``; random ones are built as on one GPU (same
seed, same weights, when they fit on the current GPU; else on the CPU, with a warning) and then dispatched.
torch, transformers and accelerate are imported lazily (accelerate here and nowhere else).
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llem_mlflow.backends.runtime import dtype_kwargs
from llem_mlflow.errors import BackendError, ConfigError

log = logging.getLogger(__name__)

#: device_map strategies computed here (balanced) or by accelerate (auto, sequential).
MAP_STRATEGIES = ("auto", "balanced", "sequential")
ACCELERATE_HINT = 'pip install "accelerate>=1.0" (or the extra: pip install "llem-mlflow[multi-gpu]")'
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
        raise BackendError(f"device_map needs the accelerate package: {ACCELERATE_HINT}") from None
    return accelerate


def meta_skeleton(config: Any, dtype: Any) -> Any:
    """The architecture on the meta device: module names, sizes and ties, with no memory and no init."""
    import torch
    from transformers import AutoModelForCausalLM

    auto_model: Any = AutoModelForCausalLM  # untyped vendor API
    with torch.device("meta"):
        return auto_model.from_config(copy.deepcopy(config), **dtype_kwargs(dtype))


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


def cpu_build_warning(weight_bytes: int) -> str:
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
