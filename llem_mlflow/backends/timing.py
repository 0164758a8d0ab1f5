"""Step timing of generate(): the prefill and every decode step, marked without waiting on the device.

Owns ``StepTimer`` (a duck-typed logits processor: CUDA events on CUDA, ``perf_counter`` on CPU) and
``step_timings`` (its intervals as ``BatchStats.prefill_s`` and ``decode_step_s``). torch is imported lazily.
"""

from __future__ import annotations

import inspect
import time
from typing import Any


class StepTimer:
    """A logits processor timing generate()'s prefill and every decode step, never waiting on the device.

    Pass it in ``logits_processor=LogitsProcessorList([timer])``: generate() calls it once per new
    token, right after the forward pass that produced that token's logits, so its first call marks
    the end of the prefill and each later call the end of one decode step. ``start()`` marks the
    beginning, right before generate(). It returns the scores unchanged (the tokens are the same as
    without it).

    On CUDA each mark records a ``torch.cuda.Event(enable_timing=True)`` on the current stream (as of
    ``start()``) of the timer's device, the one generate() hands the scores over on: the input device, as
    generate() copies the logits to ``input_ids.device``. For a model split over GPUs that copy makes this
    stream wait for the last stage, so each mark follows the whole step; should the scores arrive on another
    device, this stream is first made to wait for that device's stream. Nothing synchronizes or copies to the
    host. The events are created by ``reserve()`` before generate() and kept for the next call, so a timer
    reused across batches creates none inside a measured window. Read ``intervals_s()`` only after the
    device has finished the work (e.g. after the output's ``.tolist()``): it waits for the last event, then
    reads ``elapsed_time`` between consecutive events. On CPU the marks are ``time.perf_counter()`` (ops
    run synchronously there). Duck-typed (transformers' ``LogitsProcessorList`` only calls
    ``processor(input_ids, scores)``), so this module imports transformers lazily.
    """

    def __init__(self, device: Any) -> None:
        self.device = device
        self._cuda = getattr(device, "type", str(device)) == "cuda"
        self._events: list[Any] = []
        self._times: list[float] = []
        self._stream: Any = None
        self._calls = 0

    @property
    def marks(self) -> int:
        """Marks taken since ``start()``: the start plus one per generated token."""
        return self._calls

    def reserve(self, marks: int) -> None:
        """Create the CUDA events for ``marks`` marks now (they are kept); a no-op on CPU."""
        if not self._cuda:
            return
        import torch

        event_cls: Any = torch.cuda.Event  # untyped vendor API
        while len(self._events) < marks:
            self._events.append(event_cls(enable_timing=True))

    def _mark(self) -> None:
        if self._cuda:
            if self._calls >= len(self._events):
                self.reserve(self._calls + 1)
            self._events[self._calls].record(self._stream)
        else:
            self._times.append(time.perf_counter())
        self._calls += 1

    def start(self) -> None:
        """Mark the beginning (right before generate()); forgets earlier marks."""
        self._calls = 0
        self._times.clear()
        if self._cuda:
            import torch

            self._stream = torch.cuda.current_stream(self.device)
        self._mark()

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Mark the end of the forward pass that produced ``scores``; return them unchanged."""
        if self._cuda and scores.device != self.device:
            self._follow(scores.device)
        self._mark()
        return scores

    def _follow(self, device: Any) -> None:
        """Order the timing stream after the work queued on ``device`` (no host wait)."""
        import torch

        self._stream.wait_stream(torch.cuda.current_stream(device))

    # LogitsProcessorList calls inspect.signature(processor.__call__) at every step; a signature
    # stored on the function makes that lookup about 3x cheaper (no code-object parsing).
    __call__.__signature__ = inspect.signature(__call__)  # type: ignore[attr-defined]

    def intervals_s(self) -> list[float]:
        """Seconds between consecutive marks (prefill first, then each decode step)."""
        if self._calls < 2:
            return []
        if not self._cuda:
            return [b - a for a, b in zip(self._times, self._times[1:], strict=False)]
        events = self._events[: self._calls]
        events[-1].synchronize()  # a no-op once the output was copied to the host
        return [float(a.elapsed_time(b)) / 1000.0 for a, b in zip(events, events[1:], strict=False)]


def step_timings(intervals: list[float], new_tokens: int) -> tuple[float | None, tuple[float, ...]]:
    """(prefill_s, decode_step_s) from a StepTimer's intervals for ``new_tokens`` generated tokens.

    Extra marks past ``new_tokens`` (a step generate() ran and then undid) are dropped; fewer marks
    than tokens means the timer missed steps, and nothing is reported rather than a wrong number.
    """
    if new_tokens < 1 or len(intervals) < new_tokens:
        return None, ()
    return intervals[0], tuple(intervals[1:new_tokens])
