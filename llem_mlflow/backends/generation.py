"""One ``generate()`` call of ``TransformersBackend``: its bound arguments and the ``BatchStats`` it yields.

``prepare`` left-pads the batch onto the model's input device, builds the greedy ``GenerationConfig``
(exactly ``max_output_tokens`` new tokens) with the fast-path fields (``fastpath.generate_kwargs``) and
binds ``model.generate`` with the ``StepTimer`` as its logits processor. With ``compile: graph`` it binds
our own decode loop instead (``decode_loop``: the same greedy tokens, the same timer marks, one CUDA graph
replay per decode step on CUDA). ``batch_stats`` counts what came out (real tokens only) and reads the
step timings. torch and transformers are imported lazily.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llem_mlflow.backends import decode_loop, fastpath
from llem_mlflow.backends.fastpath import FastPath
from llem_mlflow.backends.timing import StepTimer, step_timings
from llem_mlflow.backends.tokens import greedy_generation_config, left_pad, output_lengths, special_ids
from llem_mlflow.protocols import BatchStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateCall:
    """``model.generate`` with every argument bound, the padded prompt width and the EOS ids."""

    generate: Callable[[], Any]
    padded_len: int
    eos_ids: set[int]


def prepare(
    model: Any,
    batch: list[list[int]],
    tokenizer_pad: int | None,
    max_output_tokens: int,
    fast: FastPath,
    timer: StepTimer,
) -> GenerateCall:
    """The call for ``batch``: left-padded ids and mask on ``timer.device``, greedy config, the timer."""
    import torch
    from transformers import LogitsProcessorList

    pad_id, eos_ids = special_ids(model, tokenizer_pad)
    ids, mask = left_pad(batch, pad_id)
    input_ids = torch.tensor(ids, dtype=torch.long, device=timer.device)
    attention_mask = torch.tensor(mask, dtype=torch.long, device=timer.device)
    timer.reserve(max_output_tokens + 1)  # CUDA events made once (warm-up), reused per batch
    if fast.graph:
        return _loop_call(model, batch, (input_ids, attention_mask), max_output_tokens, fast, timer, eos_ids)
    config = greedy_generation_config(max_output_tokens, pad_id, eos_ids)
    for key, value in fastpath.generate_kwargs(fast).items():
        setattr(config, key, value)  # static cache and compile settings (fastpath)
    processors: Any = LogitsProcessorList  # untyped vendor API
    generate = functools.partial(
        model.generate,
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=config,
        logits_processor=processors([timer]),
    )
    return GenerateCall(generate, int(input_ids.shape[1]), eos_ids)


def _loop_call(
    model: Any,
    batch: list[list[int]],
    tensors: tuple[Any, Any],
    max_output_tokens: int,
    fast: FastPath,
    timer: StepTimer,
    eos_ids: set[int],
) -> GenerateCall:
    """The decode loop's call for the padded ``tensors`` (ids, mask): the model's own loop, graphs on CUDA."""
    import torch

    input_ids, attention_mask = tensors
    width = int(input_ids.shape[1])
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=timer.device) if eos_ids else None
    call = decode_loop.LoopCall(
        input_ids=input_ids,
        attention_mask=attention_mask,
        new_tokens=max_output_tokens,
        cache_len=max(fast.max_cache_len or 0, width + max_output_tokens),
        eos=eos,
        padded=any(len(row) < width for row in batch),
    )
    device = timer.device
    graphs = decode_loop.CudaGraphs(device) if getattr(device, "type", str(device)) == "cuda" else None
    loop = decode_loop.loop_for(model, graphs)
    return GenerateCall(functools.partial(loop.run, model, call, timer), width, eos_ids)


def batch_stats(batch: list[list[int]], out: Any, call: GenerateCall, timer: StepTimer) -> BatchStats:
    """Exact counts of ``out`` (the generated ids, prompt included) and the timer's step timings."""
    padded_len = call.padded_len
    new_rows = out[:, padded_len:].tolist()  # waits for the device: every timing event is done
    new_tokens = int(out.shape[1] - padded_len)
    prefill_s, decode_step_s = step_timings(timer.intervals_s(), new_tokens)
    if prefill_s is None and new_tokens > 0:
        log.warning("%d step marks for %d new tokens: step timings dropped", timer.marks - 1, new_tokens)
    output_lens = output_lengths(new_rows, call.eos_ids)
    return BatchStats(
        input_tokens=sum(len(row) for row in batch),
        output_tokens=sum(output_lens),
        padded_input_len=padded_len,
        new_tokens=new_tokens,
        batch_size=len(batch),
        prefill_s=prefill_s,
        decode_step_s=decode_step_s,
        input_lens=tuple(len(row) for row in batch),
        output_lens=output_lens,
    )
