"""Which tokenizer ``TransformersBackend`` tokenizes with, found once and kept (no model needed).

The model's own tokenizer (local folder, HF cache, or hub when reachable); when it cannot be had and
weights are ``random`` or ``auto``, the byte-level fallback of ``backends.tokenizers`` with a warning
(logged and kept for ``LoadedModel.warnings``); with ``pretrained``, a ``BackendError``. A failed
lookup is remembered, so every later call raises the same error without looking again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from llem_mlflow.backends.hub import load_model_tokenizer
from llem_mlflow.backends.tokenizers import BYTE_FALLBACK_NAME, ByteTokenizer, TextTokenizer
from llem_mlflow.errors import BackendError

log = logging.getLogger(__name__)


class TokenizerChoice:
    """The tokenizer of ``model``, resolved on first use; ``vocab_size`` sizes the byte fallback."""

    def __init__(self, model: str, weights: str, remote_code: bool, vocab_size: Callable[[], int]) -> None:
        self._model = model
        self._weights = weights
        self._remote_code = remote_code
        self._vocab_size = vocab_size
        self._tokenizer: TextTokenizer | None = None
        self._error: str | None = None
        self.warnings: list[str] = []  # the fallback's warning, once chosen

    @property
    def pad_token_id(self) -> int | None:
        """The chosen tokenizer's pad id; None when it has none or none was chosen yet."""
        return self._tokenizer.pad_token_id if self._tokenizer is not None else None

    def get(self) -> TextTokenizer:
        """The tokenizer (resolved on the first call); ``BackendError`` when there is none."""
        if self._tokenizer is None and self._error is None:
            try:
                self._tokenizer = self._resolve()
            except BackendError as exc:
                self._error = str(exc)
        if self._tokenizer is None:
            raise BackendError(str(self._error))
        return self._tokenizer

    def _resolve(self) -> TextTokenizer:
        """The model's own tokenizer, else (weights random or auto) the byte-level fallback."""
        name = self._model
        try:
            return load_model_tokenizer(name, self._remote_code)
        except BackendError as exc:
            reason = str(exc)
        if self._weights == "pretrained":
            raise BackendError(
                f"no tokenizer for model {name!r}: {reason}. Use dataset=synthetic (token ids, no tokenizer "
                "needed), provide the tokenizer files, or use weights=random (byte-level fallback tokenizer)"
            )
        try:
            fallback = ByteTokenizer(self._vocab_size())
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
        self.warnings.append(warning)
        return fallback

    def tokenize(self, prompts: list[str], max_input_tokens: int) -> list[list[int]]:
        """Token ids of prompts, truncated to ``max_input_tokens``; an empty row is a ``BackendError``."""
        rows = self.get().encode(prompts, max_input_tokens)
        for index, row in enumerate(rows):
            if not row:
                raise BackendError(f"prompt {index} is empty after tokenization; remove empty prompts")
        return rows
