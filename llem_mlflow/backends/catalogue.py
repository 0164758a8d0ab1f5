"""The shipped model catalogue: transformers ``config.json`` contents for a few known models.

They let ``weights=random`` (and the ``auto`` fallback) build a realistic architecture with
no network and no cache. Files live in ``llem_mlflow/models/`` under filesystem-safe names
(``/`` in a hub id becomes ``--``); this module maps hub ids and short aliases to them, and reads the
context length from any ``config.json`` content. Pure ``json`` + ``importlib.resources``: no vendor import.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

#: Accepted model name -> JSON file in ``llem_mlflow/models/``.
_FILES: dict[str, str] = {
    "gpt2": "gpt2.json",
    "openai-community/gpt2": "gpt2.json",
    "gpt2-medium": "gpt2-medium.json",
    "openai-community/gpt2-medium": "gpt2-medium.json",
    "gpt2-large": "gpt2-large.json",
    "openai-community/gpt2-large": "gpt2-large.json",
    "gpt2-xl": "gpt2-xl.json",
    "openai-community/gpt2-xl": "gpt2-xl.json",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": "TinyLlama--TinyLlama-1.1B-Chat-v1.0.json",
    "llem/tiny-gpt2": "llem--tiny-gpt2.json",
    "llem/tiny-llama": "llem--tiny-llama.json",
}

#: Config keys that hold the maximum number of positions, in the order they are looked up.
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")


def shipped_models() -> list[str]:
    """Every model name with a shipped config (hub ids and aliases), sorted."""
    return sorted(_FILES)


def shipped_config(name: str) -> dict[str, Any] | None:
    """A fresh copy of the shipped ``config.json`` content for ``name``, or None if not shipped."""
    file_name = _FILES.get(name)
    if file_name is None:
        return None
    text = resources.files("llem_mlflow").joinpath("models").joinpath(file_name).read_text(encoding="utf-8")
    config: dict[str, Any] = json.loads(text)
    return config


def context_length(config: Mapping[str, Any]) -> int | None:
    """The first positive integer under ``CONTEXT_KEYS`` in a ``config.json`` content, else None."""
    for key in CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
