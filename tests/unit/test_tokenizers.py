"""The byte-level fallback tokenizer and the model-tokenizer adapter (no vendor library needed)."""

from __future__ import annotations

from typing import Any

import pytest

from llem_mlflow.backends.tokenizers import BYTE_FALLBACK_NAME, ByteTokenizer, ModelTokenizer
from llem_mlflow.errors import BackendError


def test_byte_tokenizer_gives_utf8_bytes_truncated_without_special_tokens() -> None:
    tok = ByteTokenizer(vocab_size=256)
    assert tok.encode(["héllo", "€", ""], max_input_tokens=4) == [[104, 195, 169, 108], [226, 130, 172], []]
    assert (tok.name, tok.pad_token_id) == (BYTE_FALLBACK_NAME, None)


def test_byte_tokenizer_needs_256_ids() -> None:
    with pytest.raises(BackendError, match=r"vocab_size >= 256 .* vocab_size is 255"):
        ByteTokenizer(vocab_size=255)


def test_model_tokenizer_calls_the_tokenizer_with_truncation() -> None:
    calls: list[dict[str, Any]] = []

    class Stub:
        pad_token_id = 0

        def __call__(self, prompts: list[str], **kwargs: Any) -> dict[str, list[list[int]]]:
            calls.append(kwargs)
            return {"input_ids": [[7] * min(len(p), kwargs["max_length"]) for p in prompts]}

    tok = ModelTokenizer(Stub(), "stub (local folder)")
    assert tok.encode(["abc", "a"], max_input_tokens=2) == [[7, 7], [7]]
    assert calls == [{"add_special_tokens": True, "truncation": True, "max_length": 2}]
    assert (tok.name, tok.pad_token_id) == ("stub (local folder)", 0)
