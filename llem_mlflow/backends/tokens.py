"""Token bookkeeping around generate(): left padding, special ids, and counting what was generated.

Owns ``left_pad`` (ids and attention mask), ``special_ids`` (pad and EOS ids), ``output_lengths``
(per row: new tokens up to and including the first EOS; no pads), the clean ``GenerationConfig`` that
keeps only a checkpoint's special token ids, and the greedy one each generate() call uses. transformers
is imported lazily.
"""

from __future__ import annotations

from typing import Any


def clean_generation_config(original: Any) -> Any:
    """A fresh GenerationConfig keeping only the special token ids of ``original``.

    A checkpoint's ``generation_config.json`` (max_length, sampling settings) would otherwise be
    merged into every generate() call and trigger warnings; the workload sets everything itself.
    """
    from transformers import GenerationConfig

    config_cls: Any = GenerationConfig  # untyped vendor API
    keep = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    return config_cls(**{name: getattr(original, name, None) for name in keep})


def as_id_set(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def special_ids(model: Any, tokenizer_pad_id: int | None) -> tuple[int, set[int]]:
    """(pad id, EOS ids): pad = tokenizer pad, else config pad, else first EOS, else 0."""
    gen = model.generation_config
    eos_ids = as_id_set(gen.eos_token_id) or as_id_set(getattr(model.config, "eos_token_id", None))
    for candidate in (tokenizer_pad_id, gen.pad_token_id, getattr(model.config, "pad_token_id", None)):
        if isinstance(candidate, int):
            return candidate, eos_ids
    return (min(eos_ids) if eos_ids else 0), eos_ids


def greedy_generation_config(max_output_tokens: int, pad_id: int, eos_ids: set[int]) -> Any:
    """Greedy decoding of exactly ``max_output_tokens`` new tokens (EOS cannot come earlier)."""
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


def output_lengths(new_rows: list[list[int]], eos_ids: set[int]) -> tuple[int, ...]:
    """Per row: new tokens up to and including the first EOS, else all of them (pads after EOS dropped)."""
    return tuple(next((i + 1 for i, tok in enumerate(row) if tok in eos_ids), len(row)) for row in new_rows)


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    """Left-padded ids and the matching attention mask (1 = real token)."""
    width = max(len(row) for row in batch)
    ids = [[pad_id] * (width - len(row)) + row for row in batch]
    mask = [[0] * (width - len(row)) + [1] * len(row) for row in batch]
    return ids, mask
