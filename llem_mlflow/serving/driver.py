"""``ServerLoad``: the server scenario's ``protocols.RequestLoad``: a cycle's prompts, in the cycle's order,
through the load generator and the streaming client; a warm-up round is one small load of the same shape.

A launched server that dies during a load (``alive`` turns False) stops it: nothing more is sent, and the
load ends as an interrupted one (``ServerDied``, a ``LoadCut``) keeping the requests that ended, so the
run keeps a partial result (status interrupted) instead of counting a dead server's refusals as errors.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from llem_mlflow.served import LoadCut, LoadRun, LoadSettings, RequestRecord
from llem_mlflow.serving.client import StreamingClient
from llem_mlflow.serving.load import LoadInterrupted, run_load, validate_load

#: Requests of one open-loop warm-up round (a closed-loop round sends ``concurrency``).
OPEN_WARMUP_REQUESTS = 8
#: How often a load checks that a launched server is still running.
WATCH_S = 0.2


class ServerDied(LoadCut):
    """The launched server exited during a load; ``reason`` says how (exit code, its log's tail)."""

    def __init__(self, records: list[RequestRecord], reason: str) -> None:
        super().__init__(records)
        self.reason = reason


class ServerLoad:
    """Sends ``order(cycle)`` (the cycle's prompts as text) to ``client`` under ``settings``."""

    def __init__(
        self,
        client: StreamingClient,
        settings: LoadSettings,
        order: Callable[[int], list[str]],
        died: Callable[[], str | None] = lambda: None,
    ) -> None:
        validate_load(settings)
        self._client = client
        self._settings = settings
        self._order = order
        self._died = died  # None while the server runs, else how it ended (launched servers only)

    @property
    def target_concurrency(self) -> int | None:
        """The closed loop's in-flight target; None for the open loop."""
        return self._settings.concurrency if self._settings.mode == "closed" else None

    @property
    def settings(self) -> LoadSettings:
        """What each cycle sends."""
        return self._settings

    def send(self, cycle: int, *, warmup: bool = False) -> LoadRun:
        """One cycle's load, or one warm-up round (``cycle`` < 0: the round's number, counting down)."""
        prompts = self._order(max(cycle, 0))
        settings = self._settings
        if warmup:
            round_n = settings.concurrency if settings.mode == "closed" else OPEN_WARMUP_REQUESTS
            count = min(round_n or 1, len(prompts))
            prompts, settings = prompts[:count], replace(settings, n=count)
        stop, done = threading.Event(), threading.Event()
        watch = threading.Thread(target=self._watch, args=(stop, done), name="llem-server-watch", daemon=True)
        watch.start()
        try:
            outcome = run_load(self._send, prompts, settings, cycle=cycle, warmup=warmup, stop=stop)
        except LoadInterrupted as cut:
            raise LoadCut(list(cut.outcome.records)) from None
        finally:
            done.set()
            watch.join()
        reason = self._died()
        if reason is not None:
            raise ServerDied(list(outcome.records), reason)
        return LoadRun(list(outcome.records), outcome.delayed)

    def _watch(self, stop: threading.Event, done: threading.Event) -> None:
        """Stop the load once the server has died (checked every ``WATCH_S``)."""
        while not done.wait(WATCH_S):
            if self._died() is not None:
                stop.set()
                return

    def _send(self, index: int, prompt: str) -> RequestRecord:
        return self._client.send(index, prompt, self._settings.max_output_tokens)
