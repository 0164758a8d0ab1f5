"""The load generator: one cycle of ``settings.n`` requests, closed loop or open loop, and its interruption.

Closed loop: ``concurrency`` worker threads; request ``i`` takes prompt ``i``; a worker starts the next
request as soon as its last one ends. Open loop: request ``i`` is sent at ``arrival_offsets(...)[i]``
seconds after the cycle starts (seeded Poisson arrivals: exponential gaps at ``request_rate``), whatever
is in flight: a dispatcher thread hands each one to its own thread, at most ``MAX_OPEN_THREADS`` at once
(a request that found them all busy waited: ``LoadOutcome.delayed`` counts them).

``send`` never raises (``client.StreamingClient.send`` turns failures into records); if it does, the
failure becomes that request's ``error``. A ``stop`` event sends no new request and lets the ones in
flight end. Ctrl-C in the main thread does the same, then raises ``LoadInterrupted`` carrying what
completed; the main thread only ever waits with timeouts, so Ctrl-C is seen at once. Standard library only.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from llem_mlflow.errors import ConfigError
from llem_mlflow.served import LoadSettings, RequestRecord

Send = Callable[[int, str], RequestRecord]
#: The most request threads the open loop runs at once; past it a request waits (and is counted).
MAX_OPEN_THREADS = 1024
#: How often the main thread wakes while it waits (it must see Ctrl-C).
_POLL_S = 0.05
#: Past the request timeout, how long an interrupted load waits for requests in flight.
_DRAIN_GRACE_S = 5.0
THREAD_PREFIX = "llem-load"


@dataclass(frozen=True)
class LoadOutcome:
    """One cycle's records (sorted by index; only requests that ended), how many open-loop requests
    waited for a free thread, and the closed loop's concurrency (None: open loop)."""

    records: list[RequestRecord]
    delayed: int = 0
    target_concurrency: int | None = None


class LoadInterrupted(KeyboardInterrupt):
    """Ctrl-C arrived while the load ran; ``outcome`` holds the requests that completed."""

    def __init__(self, outcome: LoadOutcome) -> None:
        super().__init__(f"load interrupted after {len(outcome.records)} completed requests")
        self.outcome = outcome


def validate_load(settings: LoadSettings) -> None:
    """Raise ``ConfigError`` for a load that cannot run; the message says what to set."""
    closed, rate = settings.concurrency, settings.request_rate
    if closed is None and rate is None:
        raise ConfigError("no load given: set concurrency (closed loop) or request_rate (open loop)")
    if closed is not None and rate is not None:
        raise ConfigError("both concurrency and request_rate are set: set one (closed or open loop)")
    if settings.mode == "closed" and closed is None:
        raise ConfigError("closed-loop load needs concurrency: set concurrency, or use the open loop")
    if settings.mode == "open" and rate is None:
        raise ConfigError("open-loop load needs request_rate: set request_rate, or use the closed loop")
    if closed is not None and closed < 1:
        raise ConfigError(f"concurrency must be >= 1, got {closed}: set concurrency to 1 or more")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise ConfigError(f"request_rate must be a positive number of requests/s, got {rate}")
    if settings.n < 1:
        raise ConfigError(f"the number of requests must be >= 1, got {settings.n}: set n to 1 or more")
    if settings.max_output_tokens < 1:
        raise ConfigError(f"max_output_tokens must be >= 1, got {settings.max_output_tokens}")
    if not settings.timeout_s > 0:
        raise ConfigError(f"the request timeout must be > 0 s, got {settings.timeout_s}")


def arrival_offsets(n: int, rate: float, seed: int, cycle: int) -> list[float]:
    """When each of ``n`` open-loop requests is sent, in seconds after the cycle starts: the first at 0,
    then exponential gaps of mean ``1 / rate``, from ``random.Random(seed * 1000003 + cycle)``."""
    rng = random.Random(seed * 1000003 + cycle)
    offsets, at = [], 0.0
    for i in range(n):
        if i:
            at += rng.expovariate(rate)
        offsets.append(at)
    return offsets


def run_load(
    send: Send,
    prompts: list[str],
    settings: LoadSettings,
    *,
    cycle: int = 0,
    warmup: bool = False,
    stop: threading.Event | None = None,
) -> LoadOutcome:
    """Send ``settings.n`` requests (request ``i`` with ``prompts[i]``) as ``settings`` says.

    Returns the records sorted by index, marked with ``cycle`` and ``warmup``. When ``stop`` is set no
    new request is sent and what ended is returned. Ctrl-C (in the main thread) stops the same way, waits
    for the requests in flight (at most the request timeout), then raises ``LoadInterrupted``.
    """
    validate_load(settings)
    if len(prompts) < settings.n:
        raise ConfigError(f"{settings.n} requests need {settings.n} prompts, got {len(prompts)}")
    run = _Run(send, prompts[: settings.n], stop or threading.Event())
    try:
        if settings.request_rate is None:
            run.start_closed(settings.concurrency or 1)
        else:
            run.start_open(arrival_offsets(settings.n, settings.request_rate, settings.seed, cycle))
        run.wait(deadline=None)
    except KeyboardInterrupt:
        run.stop.set()
        with contextlib.suppress(KeyboardInterrupt):  # asked twice: return what ended now
            run.wait(deadline=time.monotonic() + settings.timeout_s + _DRAIN_GRACE_S)
        raise LoadInterrupted(run.outcome(cycle, warmup, settings.concurrency)) from None
    return run.outcome(cycle, warmup, settings.concurrency)


class _Run:
    """One cycle's threads and what they recorded."""

    def __init__(self, send: Send, prompts: list[str], stop: threading.Event) -> None:
        self.send, self.prompts, self.stop = send, prompts, stop
        self.lock = threading.Lock()
        self.records: dict[int, RequestRecord] = {}
        self.threads: list[threading.Thread] = []
        self.live = 0  # threads started and not yet ended
        self.idle = threading.Event()  # set when live falls to 0
        self.next_index = 0
        self.delayed = 0
        self.slots = threading.BoundedSemaphore(MAX_OPEN_THREADS)

    def start_closed(self, concurrency: int) -> None:
        for k in range(min(concurrency, len(self.prompts))):
            self._start(self._worker, f"{THREAD_PREFIX}-worker-{k}")

    def start_open(self, offsets: list[float]) -> None:
        self._start(lambda: self._dispatch(offsets), f"{THREAD_PREFIX}-dispatch")

    def wait(self, deadline: float | None) -> None:
        """Until every thread ended (or ``deadline``, monotonic), waking often so Ctrl-C is seen.

        Never ``Thread.join`` while Ctrl-C may come: on CPython 3.11 an interrupted ``join`` can mark a
        running thread as stopped (bpo-45274's fix). Threads count themselves out instead; once all
        have, they are joined (they are past their last line).
        """
        while not self.idle.wait(_POLL_S):
            if deadline is not None and time.monotonic() >= deadline:
                return
        for thread in list(self.threads):
            thread.join()

    def outcome(self, cycle: int, warmup: bool, concurrency: int | None) -> LoadOutcome:
        with self.lock:
            done = [self.records[i] for i in sorted(self.records)]
            delayed = self.delayed
        records = [replace(r, cycle=cycle, warmup=warmup) for r in done]
        return LoadOutcome(records, delayed=delayed, target_concurrency=concurrency)

    def _start(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=self._counted, args=(target,), name=name, daemon=True)
        with self.lock:
            self.threads.append(thread)
            self.live += 1
            self.idle.clear()
        thread.start()

    def _counted(self, target: Callable[[], None]) -> None:
        try:
            target()
        finally:
            with self.lock:
                self.live -= 1
                if self.live == 0:
                    self.idle.set()

    def _worker(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                index = self.next_index
                if index >= len(self.prompts):
                    return
                self.next_index += 1
            self._one(index)

    def _dispatch(self, offsets: list[float]) -> None:
        start = time.monotonic()
        for index, offset in enumerate(offsets):
            if self.stop.wait(max(0.0, start + offset - time.monotonic())):
                return
            if not self.slots.acquire(blocking=False):
                with self.lock:
                    self.delayed += 1
                while not self.slots.acquire(timeout=_POLL_S):
                    if self.stop.is_set():
                        return
            if self.stop.is_set():
                self.slots.release()
                return
            self._start(functools.partial(self._one_slot, index), f"{THREAD_PREFIX}-request-{index}")

    def _one_slot(self, index: int) -> None:
        try:
            self._one(index)
        finally:
            self.slots.release()

    def _one(self, index: int) -> None:
        try:
            record = self.send(index, self.prompts[index])
        except Exception as exc:  # a bug in send: keep it as this request's failure, not a dead thread
            now = time.time()
            record = RequestRecord(index, sent_s=now, end_s=now, error=f"client: {type(exc).__name__}: {exc}")
        with self.lock:
            self.records[index] = record
