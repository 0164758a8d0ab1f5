"""A cheap, optional quality figure: the model's perplexity on a held-out text shipped with the package.

``heldout_text()`` is ``llem_mlflow/models/heldout.txt`` (original ASCII prose, read offline through
``importlib.resources``); ``heldout_sha256()`` names that exact text. ``perplexity()`` scores a text with the
standard sliding window (windows of ``window`` tokens, stride ``window // 2``; each window's loss counts only
the tokens no earlier window scored), so every token after the first is scored exactly once, with between
``window // 2`` and ``window - 1`` tokens of context once the text is longer than a window. The figure is
``exp`` of the mean negative log-likelihood (natural log) over those tokens. torch is imported lazily, inside
``perplexity()``. ``backend_quality()`` and ``random_weights_note()`` hold ``TransformersBackend``'s
``quality()`` and ``quality_note()`` logic, so hf.py keeps two short methods.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from llem_mlflow.backends.tokenizers import ByteTokenizer
from llem_mlflow.errors import BackendError, ConfigError

#: The held-out text, inside the package: ``llem_mlflow/<HELDOUT_FILE>``.
HELDOUT_FILE = "models/heldout.txt"
#: The most tokens of the text scored (the text is cut there).
MAX_TOKENS = 2048
#: The largest window, whatever the model's context length.
MAX_WINDOW = 1024
#: What ``quality_note()`` says when the loaded weights are random.
RANDOM_WEIGHTS_NOTE = (
    "random weights: the perplexity of an untrained model says nothing about quality "
    "(it is near the vocabulary size)"
)


@dataclass(frozen=True)
class PerplexityFigure:
    """Perplexity of a model on a text: ``tokens`` scored, ``window`` tokens per forward pass at most."""

    perplexity: float
    tokens: int  # tokens scored: the (capped) token count less one, the first has no context
    window: int
    text_sha256: str  # sha256 of the text's UTF-8 bytes
    seconds: float  # wall time of the forward passes and the loss


def heldout_text() -> str:
    """The shipped held-out text (ASCII)."""
    return resources.files("llem_mlflow").joinpath(HELDOUT_FILE).read_text(encoding="ascii")


def text_sha256(text: str) -> str:
    """Hex sha256 of ``text``'s UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def heldout_sha256() -> str:
    """Hex sha256 of the shipped held-out text: which text a perplexity figure was computed on."""
    return text_sha256(heldout_text())


def window_for(context_length: int | None) -> int:
    """The window: the model's context length, at most ``MAX_WINDOW`` (``MAX_WINDOW`` when unknown)."""
    return min(context_length or MAX_WINDOW, MAX_WINDOW)


def spans(n_ids: int, window: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` per window over ``n_ids`` tokens: ids[begin:end] go in, and the
    predictions of ids[first_scored:end] count (the HF recipe: stride ``window // 2``)."""
    stride = window // 2
    out: list[tuple[int, int, int]] = []
    scored_to = 1  # the first token has no context, it is never predicted
    for begin in range(0, n_ids, stride):
        end = min(begin + window, n_ids)
        out.append((begin, end, scored_to))
        scored_to = end
        if end == n_ids:
            break
    return out


def perplexity(
    model: Any,
    tokenizer_encode: Callable[[str], list[int]],
    text: str,
    *,
    max_tokens: int = MAX_TOKENS,
    window: int,
    device: str,
) -> PerplexityFigure:
    """Token-level perplexity of ``model`` (a causal LM: ``model(input_ids=...)`` gives ``.logits``) on
    ``text``, its first ``max_tokens`` tokens, scored by the sliding window in inference mode, eval mode.

    ``ConfigError`` for a window under 2 or ``max_tokens`` under 2; ``BackendError`` when the text has
    fewer than 2 tokens.
    """
    if window < 2 or max_tokens < 2:
        raise ConfigError(f"perplexity needs window >= 2 and max_tokens >= 2, not {window} and {max_tokens}")
    ids = list(tokenizer_encode(text))[:max_tokens]
    if len(ids) < 2:
        raise BackendError(f"the text has {len(ids)} token(s), perplexity needs 2 or more: use a longer text")
    import torch

    was_training = bool(getattr(model, "training", False))
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            all_ids = torch.tensor([ids], dtype=torch.long, device=device)
            total = torch.zeros((), dtype=torch.float64, device=device)
            for begin, end, first in spans(len(ids), window):
                total += _window_nll(model, all_ids[:, begin:end], first - begin)
            mean_nll = float(total.item()) / (len(ids) - 1)
    finally:
        if was_training:
            model.train()
    seconds = time.perf_counter() - start
    return PerplexityFigure(
        perplexity=math.exp(mean_nll),
        tokens=len(ids) - 1,
        window=window,
        text_sha256=text_sha256(text),
        seconds=seconds,
    )


def _window_nll(model: Any, input_ids: Any, first: int) -> Any:
    """Summed negative log-likelihood (float64 tensor) of input_ids[:, first:] given what precedes them."""
    import torch

    out = model(input_ids=input_ids, use_cache=False)
    logits = out.logits if hasattr(out, "logits") else out[0]
    predicted = logits[0, first - 1 : -1].float()  # position p predicts token p + 1
    targets = input_ids[0, first:]
    loss = torch.nn.functional.cross_entropy(predicted, targets, reduction="sum")
    return loss.double()


def encoder_of(tokenizer: Any) -> Callable[[str], list[int]]:
    """Text -> ids without truncation: the byte fallback's UTF-8 bytes, else the wrapped transformers
    tokenizer's ``encode`` (special tokens as the tokenizer adds them, e.g. Llama's BOS)."""
    if isinstance(tokenizer, ByteTokenizer):
        return lambda text: list(text.encode("utf-8"))
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is None or not callable(getattr(inner, "encode", None)):
        raise BackendError(f"tokenizer {type(tokenizer).__name__} cannot encode a text without truncation")
    return lambda text: [int(i) for i in inner.encode(text)]


def backend_quality(model: Any, tokenizer: Any, context_length: int | None, device: str) -> PerplexityFigure:
    """The held-out perplexity of a loaded model, its inputs on ``device``, with its own tokenizer."""
    window = window_for(context_length)
    return perplexity(model, encoder_of(tokenizer), heldout_text(), window=window, device=device)


def random_weights_note(random_weights: bool) -> str | None:
    """``RANDOM_WEIGHTS_NOTE`` when the loaded weights are random, else None."""
    return RANDOM_WEIGHTS_NOTE if random_weights else None
