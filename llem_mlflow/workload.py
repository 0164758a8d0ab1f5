"""The fixed, seeded workload: which prompts, in which batches.

Synthetic prompts are seeded random token ids of exactly ``max_input_tokens``; a ``.jsonl``
dataset gives text prompts (one ``{"prompt": "..."}`` object per line) that the backend tokenizes.
Pure Python: no vendor library.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from llem_mlflow.errors import ConfigError

T = TypeVar("T")


def synthetic_prompts(vocab_size: int, n: int, length: int, seed: int) -> list[list[int]]:
    """``n`` prompts of ``length`` token ids drawn uniformly from ``[0, vocab_size)`` with ``seed``."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(n)]


def read_jsonl_prompts(path: Path, n: int) -> list[str]:
    """The first ``n`` prompts of a JSON-lines file.

    Raises:
        ConfigError: missing file, a line that is not ``{"prompt": "<text>"}``, or fewer than ``n`` prompts.
    """
    if not path.is_file():
        raise ConfigError(f"dataset: file not found: {path} (use 'synthetic' or a .jsonl path)")
    prompts: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if len(prompts) == n:
                break
            if line.strip():
                prompts.append(_parse_line(path, lineno, line))
    if len(prompts) < n:
        raise ConfigError(f"dataset: {path} holds {len(prompts)} prompts but n={n}; lower n or add prompts")
    return prompts


def _parse_line(path: Path, lineno: int, line: str) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"dataset: {path}:{lineno} is not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not obj["prompt"]:
        raise ConfigError(f'dataset: {path}:{lineno} must be an object like {{"prompt": "some text"}}')
    prompt: str = obj["prompt"]
    return prompt


def batches(items: Sequence[T], batch_size: int) -> list[list[T]]:
    """Consecutive batches of at most ``batch_size`` items (the last may be smaller)."""
    return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
