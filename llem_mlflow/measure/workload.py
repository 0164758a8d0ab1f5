"""The fixed, seeded workload: which prompts, in which batches.

Synthetic prompts are seeded random token ids of exactly ``max_input_tokens``; a ``.jsonl``
dataset gives text prompts (one JSON object per line, the text under ``prompt_field``, default
``"prompt"``) that the backend tokenizes. Lines holding an object whose keys all start with ``_``
(e.g. ``{"_provenance": ...}``) are metadata: skipped and counted. Pure Python: no vendor library.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from llem_mlflow.errors import ConfigError

T = TypeVar("T")


def synthetic_prompts(vocab_size: int, n: int, length: int, seed: int) -> list[list[int]]:
    """``n`` prompts of ``length`` token ids drawn uniformly from ``[0, vocab_size)`` with ``seed``."""
    rng = random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(length)] for _ in range(n)]


@dataclass(frozen=True)
class PromptFile:
    """The prompts read from a ``.jsonl`` dataset and how many metadata lines were skipped on the way."""

    prompts: list[str]
    metadata_lines: int


def read_jsonl_prompts(path: Path, n: int, field: str = "prompt") -> PromptFile:
    """The first ``n`` prompts of a JSON-lines file, the text under ``field`` of each object.

    Blank lines are skipped; metadata lines (objects whose keys all start with ``_``) are skipped
    and counted (those met before the ``n``-th prompt).

    Raises:
        ConfigError: missing file, invalid JSON, a line without a non-empty string under ``field``
            (the message gives the file, line number and the line's keys), or fewer than ``n`` prompts.
    """
    if not path.is_file():
        raise ConfigError(f"dataset: file not found: {path} (use 'synthetic' or a .jsonl path)")
    prompts: list[str] = []
    metadata = 0
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if len(prompts) == n:
                break
            if not line.strip():
                continue
            obj = _parse_object(path, lineno, line, field)
            if _is_metadata(obj):
                metadata += 1
            else:
                prompts.append(_prompt_text(path, lineno, obj, field))
    if len(prompts) < n:
        raise ConfigError(
            f"dataset: {path} holds {len(prompts)} prompts under prompt_field {field!r} but n={n}; "
            "lower n or add prompts"
        )
    return PromptFile(prompts=prompts, metadata_lines=metadata)


def _parse_object(path: Path, lineno: int, line: str, field: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"dataset: {path}:{lineno} is not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ConfigError(
            f"dataset: {path}:{lineno} must be a JSON object with the prompt text under prompt_field "
            f"{field!r}, not {type(obj).__name__}"
        )
    return obj


def _is_metadata(obj: dict[str, Any]) -> bool:
    return bool(obj) and all(str(key).startswith("_") for key in obj)


def _prompt_text(path: Path, lineno: int, obj: dict[str, Any], field: str) -> str:
    value = obj.get(field)
    if field not in obj:
        raise ConfigError(
            f"dataset: {path}:{lineno} has no key {field!r} (prompt_field); its keys are {_keys(obj)}: "
            "set prompt_field to the one holding the prompt text"
        )
    if not isinstance(value, str) or not value:
        kind = "an empty string" if value == "" else "null" if value is None else type(value).__name__
        raise ConfigError(
            f"dataset: {path}:{lineno}: {field!r} (prompt_field) must be a non-empty string, not {kind}"
        )
    return value


def _keys(obj: dict[str, Any], limit: int = 12) -> str:
    keys = [json.dumps(key) for key in obj]
    shown = ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")
    return shown or "none"


def batches(items: Sequence[T], batch_size: int) -> list[list[T]]:
    """Consecutive batches of at most ``batch_size`` items (the last may be smaller)."""
    return [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]


def cycle_order(groups: Sequence[T], cycle: int, seed: int) -> list[T]:
    """The batches of measured cycle ``cycle``: cycle 0 in dataset order, cycle k > 0 shuffled.

    Cycle k > 0 uses ``random.Random(seed * 1_000_003 + k)``, so a rerun with the same seed repeats
    every cycle's order, and no cycle's order depends on how many cycles run.
    """
    order = list(groups)
    if cycle > 0:
        random.Random(seed * 1_000_003 + cycle).shuffle(order)
    return order
