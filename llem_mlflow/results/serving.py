"""The server scenario's part of a result (``ExperimentResult.serving``): the server, the load, the
requests' outcome and latency, each cycle's steady-state window, and the per-request energy summary.

The per-request table itself (timings, tokens, joules) is ``requests.parquet`` beside result.json
(``files.write_requests_parquet``); these are its summaries. ``latency`` pools every cycle's requests;
``cycle_intervals`` holds the same percentiles and net J/request taken per cycle, with their 95 %
intervals across cycles (``figures.serving_cycles``; absent from results written before it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from llem_mlflow.figures.serving import ApportionSummary, ServingLatency
from llem_mlflow.figures.serving_cycles import ServingIntervals

#: Where per-request joules come from (docs/methodology.md, "Per-request energy").
APPORTION_RULE = (
    "net energy (counter, above the idle baseline) cut into 100 ms intervals shaped by the power trace; "
    "each interval charged to the requests by their share of the tokens produced in it (usage tokens "
    "spread evenly from first to last chunk), equally to the requests in flight when none produced one"
)
#: When the steady-state window opens and closes (closed loop).
STEADY_RULE = (
    "from when the target concurrency is first reached until the first request that ends after the last "
    "send (the drain's first completion); energy by the counter reads polled every 100 ms, interpolated "
    "at both edges"
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ServedWindow(_Model):
    """One cycle's steady-state window: its span, tokens produced in it, energy and occupancy."""

    cycle: int
    start_s: float
    end_s: float
    duration_s: float = Field(ge=0)
    output_tokens: float = Field(ge=0)  # by the token timing rule: requests straddle its edges
    occupancy: float = Field(ge=0)  # mean in-flight requests / target concurrency
    gross_j: float | None = None
    net_j: float | None = None
    edge_uncertainty_j: float | None = None  # the counter's ~100 ms update at each client-clock edge
    energy_per_output_token_j: float | None = None
    net_energy_per_output_token_j: float | None = None
    output_tokens_per_s: float = Field(ge=0)


class ServingFigures(_Model):
    """What the server scenario measured beyond an in-process run's figures."""

    engine: str  # transformers, vllm, sglang, tgi or unknown
    engine_version: str | None = None
    url: str  # credentials scrubbed
    served_model: str
    launched: bool
    command: str | None = None  # as launched, credentials scrubbed
    load: Literal["closed", "open"]
    api: Literal["completions", "chat"]
    concurrency: int | None = None
    request_rate: float | None = None
    requests: int = Field(ge=0)  # measured (warm-up excluded)
    completed: int = Field(ge=0)
    failed: int = Field(ge=0)  # HTTP errors, timeouts, broken streams
    without_usage: int = Field(ge=0)  # completed, but the server gave no token counts
    error_rate: float = Field(ge=0, le=1)
    delayed_sends: int = Field(0, ge=0)  # open loop: arrivals the client could not send on time
    warmup_requests: int = Field(0, ge=0)
    errors: dict[str, int] = Field(default_factory=dict)  # first words of each error -> count
    latency: ServingLatency
    steady_rule: str = STEADY_RULE
    steady: list[ServedWindow] = Field(default_factory=list)  # closed loop, where the target was reached
    apportion_rule: str = APPORTION_RULE
    per_request: ApportionSummary | None = None  # null without energy or without requests
    net_per_request_j: float | None = None  # net energy / completed requests
    cycle_intervals: ServingIntervals | None = None  # per-cycle figures across cycles; None below 2 cycles
    gpu_processes: list[str] = Field(default_factory=list)  # what NVML saw on the measured GPUs
    notes: list[str] = Field(default_factory=list)
