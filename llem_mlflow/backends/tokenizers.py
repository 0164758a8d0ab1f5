"""Text to token ids for ``TransformersBackend.tokenize``: the model's own tokenizer, or a byte fallback.

``ModelTokenizer`` wraps a transformers tokenizer object (it only calls it: no vendor import here).
``ByteTokenizer`` is the documented fallback for random weights when the model's tokenizer cannot be
had: the UTF-8 bytes of a prompt are its token ids (byte ``b`` -> id ``b``), truncated to
``max_input_tokens``, with no special tokens. It needs ``vocab_size >= 256``. Prompt token counts then
differ from the model's own tokenizer (about one token per byte), which the run's warning says.
Pure Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from llem_mlflow.errors import BackendError

BYTE_FALLBACK_NAME = "byte-level fallback (UTF-8 bytes as ids)"
BYTE_VOCAB = 256


class TextTokenizer(Protocol):
    """What ``tokenize`` needs: a name for the record, a pad id (or None) and encoding."""

    @property
    def name(self) -> str:
        """Which tokenizer, and where it came from."""
        ...

    @property
    def pad_token_id(self) -> int | None:
        """The tokenizer's pad id, None when it has none (the model config decides)."""
        ...

    def encode(self, prompts: Sequence[str], max_input_tokens: int) -> list[list[int]]:
        """Token ids per prompt, truncated to ``max_input_tokens``."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` (special tokens left out): what a server scenario sends."""
        ...


@dataclass(frozen=True)
class ModelTokenizer:
    """The model's own (transformers) tokenizer; special tokens included as the tokenizer adds them."""

    tokenizer: Any
    name: str  # e.g. "gpt2 (HF cache)"

    @property
    def pad_token_id(self) -> int | None:
        """The tokenizer's pad id, if it has one."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if isinstance(pad, int) else None

    def encode(self, prompts: Sequence[str], max_input_tokens: int) -> list[list[int]]:
        """The tokenizer's ids, truncated to ``max_input_tokens``."""
        encoded = self.tokenizer(
            list(prompts), add_special_tokens=True, truncation=True, max_length=max_input_tokens
        )
        return [list(map(int, ids)) for ids in encoded["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        """The tokenizer's text of ``ids``, special tokens skipped."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as token ids (byte ``b`` -> id ``b``), no special tokens; needs ``vocab_size >= 256``."""

    vocab_size: int
    name: str = BYTE_FALLBACK_NAME
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.vocab_size < BYTE_VOCAB:
            raise BackendError(
                f"the byte-level fallback tokenizer needs vocab_size >= {BYTE_VOCAB} (byte b is token id b), "
                f"but the model's vocab_size is {self.vocab_size}"
            )

    def encode(self, prompts: Sequence[str], max_input_tokens: int) -> list[list[int]]:
        """The prompt's UTF-8 bytes, the first ``max_input_tokens`` of them."""
        return [list(prompt.encode("utf-8")[:max_input_tokens]) for prompt in prompts]

    def decode(self, ids: Sequence[int]) -> str:
        """The UTF-8 text of byte ids; ids above 255 and broken sequences become U+FFFD."""
        return bytes(i if 0 <= i < BYTE_VOCAB else 0x3F for i in ids).decode("utf-8", errors="replace")
