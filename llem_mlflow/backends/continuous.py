"""``batching: continuous``: one cycle pass's prompts through transformers' continuous-batching manager.

``ContinuousBatching.generate`` hands every prompt of the call to the manager that ``generate_batch`` uses
(``init_continuous_batching``); transformers' scheduler (the one ``transformers serve --continuous-batching``
runs) decides which requests share each forward pass, at most ``max_requests`` of them
(``ContinuousBatchingConfig.max_requests_per_batch``, set from ``batch_size``). The tokens are the static
path's: greedy, exactly ``max_output_tokens`` new tokens per prompt. Continuous batching drops
``min_new_tokens`` (its ``MinNewTokensLengthLogitsProcessor`` is marked unsupported), so EOS is kept out
instead by ``eos_token_id=-1`` (no stop) and ``suppress_tokens`` = the EOS ids (never chosen), which is what
``min_new_tokens == max_new_tokens`` does.

The manager (paged KV cache, CUDA graphs) is built and warmed up by the first call and kept on the model
(``_cached_continuous_batching_manager``, as ``generate_batch(persistent_manager=True)`` keeps it) for every
later call; each call still starts and stops the manager's generation thread, inside the measured window.
The paged cache and the tokens per forward are sized for ``max_requests`` requests of the first call's
length, on every device: transformers would size them from free memory (host RAM on CPU, free GPU memory on
CUDA, as a server does), and 5.17's ``paged|sdpa`` then fills a mask of max_batch_tokens x cache tokens per
forward: on CPU 69,319 tokens and ~19 GB, 20-30 s per manager. On an H100 (5.17) the unsized manager made
gpt2's warm-up take 45.6 s and the ~1.1B one run past 150 s; that the sizing cures this is not yet measured
on a GPU. The attention kernel is transformers'
choice for the one loaded (``auto_switch_to_flash=False`` where that field exists): 5.25 runs ``sdpa`` as
loaded, 5.17 switches to ``paged|sdpa`` and back when the thread stops.

The wait is ours, not ``generate_batch``'s (whose loop waits as long as the thread lives): a loop that died
(transformers fails every request with its error) raises ``BackendError`` with that error
(``errors.OutOfMemoryError`` when it ran out of memory); one with no forward step and no result for
``STALL_S`` raises too; and any exception, Ctrl-C/SIGTERM included, hard-stops the thread and joins it
(``JOIN_S``) before it goes on. A flushing stop left running is what crashed TinyLlama on 5.17: its ``stop``
restores ``sdpa`` after a timed-out join, and the next forward of the still-running loop fails with plain
sdpa against the paged mask. ``BatchStats`` carries no step timings (``prefill_s`` None): requests do not
share their first token or their decode steps (the server scenario's requests carry none either).
transformers is imported lazily; continuous batching exists in transformers >= 5.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from llem_mlflow.backends.runtime import out_of_memory_error
from llem_mlflow.backends.tokens import special_ids
from llem_mlflow.errors import BackendError
from llem_mlflow.protocols import BatchStats

#: transformers' continuous-batching logger, and the warning of it this module answers for itself: EOS
#: suppression (the tests check it).
CB_LOGGER = "ContinuousBatchingLogger"
KNOWN_WARNINGS = ("SuppressTokensLogitsProcessor might not be supported",)


class _Known(logging.Filter):
    """Drops the continuous-batching warnings listed in ``KNOWN_WARNINGS``; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in KNOWN_WARNINGS)


logging.getLogger(CB_LOGGER).addFilter(_Known())
log = logging.getLogger(__name__)

#: Tokens per KV cache page (transformers' default page/block size), for the CPU cache size.
PAGE_TOKENS = 256
#: Seconds between looks at the generation thread while no result comes.
POLL_S = 0.5
#: Seconds without a forward step or a finished request before the call gives up on the loop (a step that
#: captures CUDA graphs or compiles can take minutes; none takes ten).
STALL_S = 600.0
#: Seconds to wait for the generation thread to end when it is stopped (a hard stop ends it after one step).
JOIN_S = 60.0


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
        """Every prompt of ``batch`` through the continuous-batching manager on ``device`` (cuda or cpu)."""
        return batch_stats(batch, self.new_tokens(model, batch, max_output_tokens, tokenizer_pad, device))

    def new_tokens(
        self,
        model: Any,
        batch: list[list[int]],
        max_output_tokens: int,
        tokenizer_pad: int | None,
        device: str,
    ) -> list[list[int]]:
        """The generated ids of each prompt of ``batch``, in order, from one session of the manager."""
        if not callable(getattr(model, "generate_batch", None)) or not callable(
            getattr(model, "init_continuous_batching", None)
        ):
            raise BackendError(generate_batch_missing())
        import torch

        _, eos_ids = special_ids(model, tokenizer_pad)
        with torch.no_grad():  # as generate_batch
            manager = self._manager(model, batch, max_output_tokens, eos_ids, device)
            outputs = run_session(manager, batch, max_output_tokens)
        fatal = getattr(getattr(manager, "background_thread_status", None), "fatal_error", None)
        if fatal is not None and len(outputs) < len(batch):
            raise failure(f"the generation loop died: {fatal}", device, batch, max_output_tokens)
        return checked_outputs(batch, outputs, max_output_tokens, device)

    def _manager(
        self, model: Any, batch: list[list[int]], max_output_tokens: int, eos_ids: set[int], device: str
    ) -> Any:
        """The model's kept manager, or a new one (kept by the first session's stop), warmed up."""
        kwargs: dict[str, Any] = {
            "generation_config": self._generation_config(max_output_tokens, eos_ids),
            "continuous_batching_config": self._cb_config(batch, max_output_tokens),
        }
        try:
            from transformers.generation.continuous_batching.utils import WorkloadHints
        except ImportError:  # pragma: no cover - a transformers without hints sizes without them
            pass
        else:
            hints: Any = WorkloadHints  # untyped vendor API
            kwargs["workload_hints"] = hints(
                max_prompt_length=max(map(len, batch)),
                max_generated_length=max_output_tokens,
                num_requests=len(batch),
            )
        manager = model.init_continuous_batching(**kwargs)
        if not getattr(manager, "warmed_up", True):
            manager.warmup()  # CUDA graphs captured here, once: not in a measured session
        return manager

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

    def _cb_config(self, batch: list[list[int]], max_output_tokens: int) -> Any:
        """Sized for at most ``max_requests`` rows of ``batch``'s longest prompt + new tokens (any device)."""
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
        kwargs: dict[str, Any] = {"max_requests_per_batch": self.max_requests}
        if "auto_switch_to_flash" in fields:
            kwargs["auto_switch_to_flash"] = False
        longest = max(map(len, batch)) + max_output_tokens
        rows = min(self.max_requests, len(batch))
        kwargs["num_blocks"] = rows * (math.ceil(longest / PAGE_TOKENS) + 1)
        kwargs["max_batch_tokens"] = rows * longest  # every row's whole prompt in one forward
        config_cls: Any = ContinuousBatchingConfig  # untyped vendor API
        return config_cls(**kwargs)


def run_session(manager: Any, batch: list[list[int]], new_tokens: int) -> list[Any]:
    """Start the manager's thread, submit ``batch``, wait for its outputs, stop the thread (manager kept).

    The outputs come in ``batch`` order; fewer than ``batch`` when the thread ended first. Any exception here
    (a stall, Ctrl-C, SIGTERM) hard-stops the thread: it ends after its current step, failing the rest.
    """
    manager.start()
    try:
        ids = list(manager.add_requests(inputs=[list(row) for row in batch], max_new_tokens=new_tokens))
        done = wait_for(manager, ids)
    except BaseException:
        manager.stop(block=True, timeout=JOIN_S, keep_for_next_session=True, hard_stop=True)
        raise
    manager.stop(block=True, timeout=JOIN_S, keep_for_next_session=True)
    return [done[i] for i in ids if i in done]


def wait_for(manager: Any, ids: list[str]) -> dict[str, Any]:
    """The finished outputs of ``ids``: all of them, or those delivered before the thread ended.

    Raises ``BackendError`` when the thread lives but neither steps nor delivers for ``STALL_S``.
    """
    want, done = set(ids), dict[str, Any]()
    step, progress_s = getattr(manager, "current_batch", 0), time.monotonic()
    while len(done) < len(want):
        out = manager.get_result(timeout=POLL_S)
        if out is not None:
            if out.is_finished() and out.request_id in want:
                done[out.request_id] = out
                progress_s = time.monotonic()
            continue
        if not manager.is_running() or _fatal(manager) is not None:
            while (out := manager.get_result(timeout=0)) is not None:  # what it delivered as it ended
                if out.is_finished() and out.request_id in want:
                    done[out.request_id] = out
            return done
        if getattr(manager, "current_batch", 0) != step:
            step, progress_s = getattr(manager, "current_batch", 0), time.monotonic()
        elif time.monotonic() - progress_s > STALL_S:
            raise BackendError(
                f"continuous batching made no forward step and finished no request for {STALL_S:.0f} s "
                f"({len(done)} of {len(want)} requests done): the generation loop is stuck; the call is "
                "not counted"
            )
    return done


def _fatal(manager: Any) -> Any:
    """The error that ended the manager's generation loop, or None."""
    return getattr(getattr(manager, "background_thread_status", None), "fatal_error", None)


def failure(
    error: str, device: str, batch: list[list[int]], new_tokens: int, prompt_len: int = 0
) -> Exception:
    """``error`` as ``BackendError``, or ``errors.OutOfMemoryError`` when it ran out of memory."""
    if "out of memory" in error.lower():
        return out_of_memory_error(error, device, len(batch), prompt_len or max(map(len, batch)), new_tokens)
    return BackendError(error)


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
            f"continuous batching returned {len(outputs)} of {len(batch)} requests (transformers logs why "
            "above); the call is not counted"
        )
    rows: list[list[int]] = []
    for i, (prompt, out) in enumerate(zip(batch, outputs, strict=True)):
        error = getattr(out, "error", None)
        if error:
            text = f"continuous batching request {i + 1} of {len(batch)} failed: {error}"
            raise failure(text, device, batch, new_tokens, len(prompt))
        if list(out.prompt_ids) != list(prompt):
            raise BackendError(f"continuous batching returned request {i + 1} out of order (prompt differs)")
        tokens = list(out.generated_tokens)
        if len(tokens) != new_tokens:
            raise BackendError(
                f"continuous batching gave request {i + 1} {len(tokens)} new tokens, not {new_tokens}: "
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
    """Stop and drop the manager kept on ``model`` (its KV cache and graphs); safe to repeat; waits at most
    ``JOIN_S`` for its thread (transformers' own ``destroy`` would wait without a bound)."""
    manager = getattr(model, "_cached_continuous_batching_manager", None)
    if manager is None:
        return
    if manager.is_running():
        manager.stop(block=True, timeout=JOIN_S, hard_stop=True)
    if manager.is_running():  # stuck inside a step: let it go rather than wait on it
        log.warning("the continuous-batching generation thread did not stop within %.0f s; dropped", JOIN_S)
        delattr(model, "_cached_continuous_batching_manager")
        return
    model.destroy_cached_continuous_batching_manager()
