"""``batching: continuous``: one cycle pass's prompts through transformers' own ``model.generate_batch``.

``ContinuousBatching.generate`` hands every prompt of the call to ``generate_batch`` at once; transformers'
scheduler (the one ``transformers serve --continuous-batching`` runs) decides which requests share each
forward pass, at most ``max_requests`` of them (``ContinuousBatchingConfig.max_requests_per_batch``, set
from ``batch_size``). The tokens are the static path's: greedy, exactly ``max_output_tokens`` new tokens
per prompt. generate_batch drops ``min_new_tokens`` (its ``MinNewTokensLengthLogitsProcessor`` is marked
unsupported by continuous batching), so EOS is kept out instead by ``eos_token_id=-1`` (no stop) and
``suppress_tokens`` = the EOS ids (never chosen), which is what ``min_new_tokens == max_new_tokens`` does.

The manager (paged KV cache, CUDA graphs) is built by the first call (the warm-up: ``warmup=True`` captures
the graphs then) and kept on the model (``persistent_manager``) for every later call; each call still starts
and stops the manager's generation thread, inside the measured window. On CPU the cache is sized for
``max_requests`` requests of the call's length (transformers would size it from host memory, gigabytes);
on CUDA transformers sizes it from free GPU memory, as a server does. The attention kernel stays the one
loaded (``auto_switch_to_flash=False`` where transformers has that field).

``BatchStats`` carries no step timings (``prefill_s`` None): requests do not share their first token or their
decode steps, so one TTFT per call and lockstep decode steps would misstate both (the server scenario's
requests carry none either). generate_batch logs a failed request rather than raising: a missing, failed or
short request raises ``BackendError`` here (``errors.OutOfMemoryError`` when it ran out of memory).
transformers is imported lazily; ``generate_batch`` exists in transformers >= 5.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from llem_mlflow.backends.runtime import out_of_memory_error
from llem_mlflow.backends.tokens import special_ids
from llem_mlflow.errors import BackendError
from llem_mlflow.protocols import BatchStats

#: transformers' continuous-batching logger, and the warnings of it this module answers for itself: the
#: kept manager (kept on purpose, for the same prompts every pass) and EOS suppression (the tests check it).
CB_LOGGER = "ContinuousBatchingLogger"
KNOWN_WARNINGS = ("persistent_manager=True", "SuppressTokensLogitsProcessor might not be supported")


class _Known(logging.Filter):
    """Drops the continuous-batching warnings listed in ``KNOWN_WARNINGS``; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in KNOWN_WARNINGS)


logging.getLogger(CB_LOGGER).addFilter(_Known())

#: Tokens per KV cache page (transformers' default page/block size), for the CPU cache size.
PAGE_TOKENS = 256


@dataclass(frozen=True)
class ContinuousBatching:
    """``batching: continuous`` of one run: at most ``max_requests`` requests in one forward pass."""

    max_requests: int

    def generate(
        self,
        model: Any,
        batch: list[list[int]],
        max_output_tokens: int,
        tokenizer_pad: int | None,
        device: str,
    ) -> BatchStats:
        """Every prompt of ``batch`` through one ``generate_batch`` call on ``device`` (cuda or cpu)."""
        return batch_stats(batch, self.new_tokens(model, batch, max_output_tokens, tokenizer_pad, device))

    def new_tokens(
        self,
        model: Any,
        batch: list[list[int]],
        max_output_tokens: int,
        tokenizer_pad: int | None,
        device: str,
    ) -> list[list[int]]:
        """The generated ids of each prompt of ``batch``, in order, from one ``generate_batch`` call."""
        run = getattr(model, "generate_batch", None)
        if run is None:
            raise BackendError(generate_batch_missing())
        _, eos_ids = special_ids(model, tokenizer_pad)
        outputs = run(
            [list(row) for row in batch],
            generation_config=self._generation_config(max_output_tokens, eos_ids),
            continuous_batching_config=self._cb_config(batch, max_output_tokens, device),
            persistent_manager=True,
            warmup=True,
            progress_bar=False,
        )
        return checked_outputs(batch, list(outputs.values()), max_output_tokens, device)

    def _generation_config(self, max_output_tokens: int, eos_ids: set[int]) -> Any:
        from transformers import GenerationConfig

        config_cls: Any = GenerationConfig  # untyped vendor API
        return config_cls(
            max_new_tokens=max_output_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=-1,  # no stop: exactly max_output_tokens tokens
            pad_token_id=0,
            suppress_tokens=sorted(eos_ids) or None,  # EOS never chosen, as min_new_tokens does
        )

    def _cb_config(self, batch: list[list[int]], max_output_tokens: int, device: str) -> Any:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
        kwargs: dict[str, Any] = {"max_requests_per_batch": self.max_requests}
        if "auto_switch_to_flash" in fields:
            kwargs["auto_switch_to_flash"] = False
        if device != "cuda":
            pages = math.ceil((max(map(len, batch)) + max_output_tokens) / PAGE_TOKENS) + 1
            kwargs["num_blocks"] = min(self.max_requests, len(batch)) * pages
        config_cls: Any = ContinuousBatchingConfig  # untyped vendor API
        return config_cls(**kwargs)


def generate_batch_missing() -> str:
    """The refusal when the installed transformers has no ``generate_batch``."""
    try:
        from transformers import __version__ as version
    except ImportError:  # pragma: no cover - the backend imports transformers before this
        version = "not installed"
    return (
        f"batching: continuous needs transformers' generate_batch (continuous batching, transformers >= 5); "
        f"this transformers ({version}) has none: upgrade transformers, or set batching: static"
    )


def checked_outputs(
    batch: list[list[int]], outputs: list[Any], new_tokens: int, device: str
) -> list[list[int]]:
    """The generated ids per prompt, in ``batch`` order; raises when a request failed, is missing or short."""
    if len(outputs) != len(batch):
        raise BackendError(
            f"generate_batch returned {len(outputs)} of {len(batch)} requests (it logs why above); "
            "the call is not counted"
        )
    rows: list[list[int]] = []
    for i, (prompt, out) in enumerate(zip(batch, outputs, strict=True)):
        error = getattr(out, "error", None)
        if error:
            if "out of memory" in str(error).lower():
                raise out_of_memory_error(str(error), device, len(batch), len(prompt), new_tokens)
            raise BackendError(f"generate_batch request {i + 1} of {len(batch)} failed: {error}")
        if list(out.prompt_ids) != list(prompt):
            raise BackendError(f"generate_batch returned request {i + 1} out of order (its prompt differs)")
        tokens = list(out.generated_tokens)
        if len(tokens) != new_tokens:
            raise BackendError(
                f"generate_batch gave request {i + 1} {len(tokens)} new tokens, not {new_tokens}: "
                "the exact token count cannot be kept"
            )
        rows.append(tokens)
    return rows


def batch_stats(batch: list[list[int]], new_rows: list[list[int]]) -> BatchStats:
    """Exact counts of one call; ``padded_input_len`` is the longest prompt (nothing is padded)."""
    output_lens = tuple(len(row) for row in new_rows)
    return BatchStats(
        input_tokens=sum(len(row) for row in batch),
        output_tokens=sum(output_lens),
        padded_input_len=max(len(row) for row in batch),
        new_tokens=max(output_lens),
        batch_size=len(batch),
        input_lens=tuple(len(row) for row in batch),
        output_lens=output_lens,
    )


def release(model: Any) -> None:
    """Drop the manager ``generate_batch`` kept on ``model`` (its KV cache and graphs); safe to repeat."""
    destroy = getattr(model, "destroy_cached_continuous_batching_manager", None)
    if model is not None and callable(destroy):
        destroy()
