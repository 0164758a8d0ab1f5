"""Where a model's files come from: a local folder, the HF cache, or the hub (when allowed and reachable).

Owns the offline switches (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``), the cheap reachability check of the
hub endpoint (a TCP connect instead of huggingface_hub's ~23 s of retries without network), the cache-first
``hub_call``, and what is read through it: the model's config (``find_config``: local folder, else the
shipped catalogue, else HF cache / hub), its tokenizer (``load_model_tokenizer``) and the commit of
pretrained weights (``pretrained_revision``). transformers and huggingface_hub are imported lazily.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llem_mlflow.backends.catalogue import shipped_config, shipped_models
from llem_mlflow.backends.tokenizers import ModelTokenizer
from llem_mlflow.errors import BackendError

_TRUTHY = {"1", "true", "yes", "on"}
_WEIGHT_GLOBS = ("*.safetensors", "*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
_HUB_CHECK_TIMEOUT_S = 3.0
_SNAPSHOT_COMMIT = re.compile(r"snapshots[/\\]([0-9a-f]{40})(?:[/\\]|$)")
#: Exceptions that mean "these weights/files cannot be had" (missing, offline, gated, bad id).
UNAVAILABLE = (OSError, ValueError, KeyError)


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


def has_weight_files(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in _WEIGHT_GLOBS)


def unknown_model_error(model: str, reason: str) -> BackendError:
    names = ", ".join(shipped_models())
    return BackendError(
        f"cannot get an architecture for model {model!r}: {reason}. Use a local model folder with "
        f"config.json, make the hub reachable (or its HF cache available), or pick a shipped model: {names}"
    )


def config_from_dict(config: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    values = dict(config)
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **values)


@contextmanager
def forced_hub_offline() -> Iterator[None]:
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
    with forced_hub_offline():
        return load(local_files_only=True)


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def hub_call(load: Any, model: str, what: str, remedy: str | None = None) -> tuple[Any, str]:
    """``load(local_files_only=...)``: the HF cache first, then the hub when allowed and reachable.

    Returns the result and where it came from (``"HF cache"`` or ``"hub"``). ``remedy`` (e.g.
    ``"use weights=random"``) ends each error message; pass it only when that option is not in effect.
    """
    offline_flag = hub_offline()
    offline = offline_flag or not hub_reachable()
    try:
        return _cache_call(load, offline), "HF cache"
    except UNAVAILABLE as exc:
        cache_error = one_line(exc)
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
    except UNAVAILABLE as exc:
        raise BackendError(
            f"could not download {what} for {model!r} from the hub: {one_line(exc)}. Check the model id, "
            f"access rights (HF_TOKEN for gated models) and network{tail}"
        ) from None


def find_config(model: str, trust_remote_code: bool = False) -> tuple[Any, str]:
    """(transformers config, source): folder config.json, else shipped config, else HF cache / hub.

    ``trust_remote_code``: let transformers run a config class from the model's repo (off by default).
    """
    from transformers import AutoConfig

    folder = local_model_folder(model)
    if folder is not None:
        try:
            with forced_hub_offline():
                config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
                return config, "local folder"
        except UNAVAILABLE as exc:
            raise BackendError(f"could not read {folder / 'config.json'}: {_remote_hint(exc)}") from None
    shipped = shipped_config(model)
    if shipped is not None:
        return config_from_dict(shipped), "shipped config"
    try:
        load = lambda **kw: AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code, **kw)  # noqa: E731
        config, where = hub_call(load, model, "the config")
    except BackendError as exc:
        raise unknown_model_error(model, str(exc)) from None
    return config, where


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


REMOTE_CODE_HINT = (
    "this model ships its own Python code, which llem-mlflow runs only when asked: read the code in "
    "its repo, then pass --trust-remote-code true (trust_remote_code: true in a config file)"
)


def _remote_hint(exc: BaseException) -> str:
    """The error on one line; transformers' "pass trust_remote_code=True" becomes our option's name."""
    text = one_line(exc)
    return REMOTE_CODE_HINT if "trust_remote_code" in text else text


def load_model_tokenizer(model: str, trust_remote_code: bool = False) -> ModelTokenizer:
    """The model's own tokenizer: the local folder's files, else the HF cache, else the hub if reachable."""
    from transformers import AutoTokenizer

    folder = local_model_folder(model)
    if folder is None:
        load = lambda **kw: AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code, **kw)  # noqa: E731
        tokenizer, where = hub_call(load, model, "the tokenizer")
        return ModelTokenizer(tokenizer, f"{model} ({where})")
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise BackendError(f"model folder {folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    try:
        with forced_hub_offline():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
            return ModelTokenizer(tokenizer, f"{model} (local folder)")
    except UNAVAILABLE as exc:
        raise BackendError(f"could not load the tokenizer in {folder}: {one_line(exc)}") from None
