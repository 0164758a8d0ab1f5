"""The server scenario's shared data: one request as the client saw it, the load to send, the server.

Plain dataclasses only (the base layer): ``serving/`` fills them (HTTP client, load generator, server
process), ``figures/serving`` turns them into windows, latencies and per-request energy, ``results``
stores them. Times are Unix epoch seconds on the client's clock (``time.time()``); no clock is shared
with the server process, so no CUDA sync bounds a window (see docs/serving.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: How requests are sent: ``closed``: ``concurrency`` in flight, a new one as soon as one ends;
#: ``open``: seeded Poisson arrivals at ``request_rate`` per second, whatever is in flight.
LoadMode = Literal["closed", "open"]
#: Which OpenAI-compatible route: ``/v1/completions`` (prompt) or ``/v1/chat/completions`` (messages).
Api = Literal["completions", "chat"]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it.

    ``index``: its place in the cycle's send order (0-based); ``sent_s``: right before the request was
    written; ``first_token_s``: arrival of the first chunk carrying generated text (None: none came);
    ``chunk_s``: arrival of every chunk carrying text, in order (chunks are not tokens: a server may pack
    several tokens in one); ``end_s``: the stream ended, failed or timed out. ``input_tokens`` /
    ``output_tokens`` come from the server's ``usage`` only (None: the server sent none).
    ``error``: None for a request that completed, else one line (``timeout after 120 s``, ``HTTP 500:
    ...``, ``connection refused``...).
    """

    index: int
    sent_s: float
    end_s: float
    first_token_s: float | None = None
    chunk_s: tuple[float, ...] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None
    cycle: int = 0
    warmup: bool = False

    @property
    def ok(self) -> bool:
        """The request completed (no HTTP error, timeout or broken stream)."""
        return self.error is None

    @property
    def has_usage(self) -> bool:
        """The server reported token counts for it."""
        return self.output_tokens is not None

    @property
    def ttft_s(self) -> float | None:
        """Time to first token, queueing at the server included."""
        return None if self.first_token_s is None else self.first_token_s - self.sent_s

    @property
    def e2e_s(self) -> float:
        """Send to end of stream."""
        return self.end_s - self.sent_s


@dataclass(frozen=True)
class LoadSettings:
    """What to send: ``n`` prompts per cycle, closed loop at ``concurrency`` or open loop at
    ``request_rate`` (requests/s, Poisson arrivals from ``seed``), each asking exactly
    ``max_output_tokens`` new tokens, through ``api``, each bounded by ``timeout_s``."""

    mode: LoadMode
    n: int
    max_output_tokens: int
    api: Api = "completions"
    concurrency: int | None = None
    request_rate: float | None = None
    timeout_s: float = 120.0
    seed: int = 42


@dataclass(frozen=True)
class ServerInfo:
    """The server measured: where it answers, what it is, and whether this run started it.

    ``engine``: ``transformers``, ``vllm``, ``sglang`` or ``unknown`` (from the command, else the
    ``/v1/models`` ``owned_by`` field); ``command``: the launch command with credentials scrubbed
    (None when attached); ``served_model``: the model name requests carry.
    """

    url: str
    engine: str
    served_model: str
    launched: bool
    command: str | None = None
    engine_version: str | None = None
    pid: int | None = None
    notes: list[str] = field(default_factory=list)


class LoadCut(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a load: nothing more was sent; ``records``: the requests that ended
    (completed, failed or timed out) before the load returned."""

    def __init__(self, records: list[RequestRecord]) -> None:
        super().__init__("interrupted")
        self.records = records


@dataclass(frozen=True)
class LoadRun:
    """What one load sent: every request's record (send order) and how many sends the client delayed
    (open loop: its thread pool was full at an arrival time)."""

    records: list[RequestRecord]
    delayed: int = 0
