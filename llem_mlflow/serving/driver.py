"""``ServerLoad``: the server scenario's ``protocols.RequestLoad``: a cycle's prompts, in the cycle's order,
through the load generator and the streaming client; a warm-up round is one small load of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from llem_mlflow.served import LoadCut, LoadRun, LoadSettings, RequestRecord
from llem_mlflow.serving.client import StreamingClient
from llem_mlflow.serving.load import LoadInterrupted, run_load, validate_load

#: Requests of one open-loop warm-up round (a closed-loop round sends ``concurrency``).
OPEN_WARMUP_REQUESTS = 8


class ServerLoad:
    """Sends ``order(cycle)`` (the cycle's prompts as text) to ``client`` under ``settings``."""

    def __init__(
        self, client: StreamingClient, settings: LoadSettings, order: Callable[[int], list[str]]
    ) -> None:
        validate_load(settings)
        self._client = client
        self._settings = settings
        self._order = order

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
        try:
            outcome = run_load(self._send, prompts, settings, cycle=cycle, warmup=warmup)
        except LoadInterrupted as cut:
            raise LoadCut(list(cut.outcome.records)) from None
        return LoadRun(list(outcome.records), outcome.delayed)

    def _send(self, index: int, prompt: str) -> RequestRecord:
        return self._client.send(index, prompt, self._settings.max_output_tokens)
