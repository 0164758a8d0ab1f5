"""The server scenario's figures (``ExperimentResult.serving``) and its per-request table, from a
``Measurement`` whose ``served`` holds the requests and the counter reads of each cycle.

Per cycle: the steady-state window (closed loop) with its energy from the interpolated counter reads,
tokens and occupancy; each request's share of the cycle's net energy (``figures.serving.apportion`` over
100 ms intervals shaped by the power trace and scaled to the counter's net total). Over the run: the
requests' outcome, latency percentiles and the J/request summary; and the per-cycle latency percentiles
and net J/request with their intervals across cycles (``figures.serving_cycles``, over the cycles not cut
short, as ``CycleStats``). Pure apart from reading the trace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.figures import serving as sf
from llem_mlflow.figures import serving_cycles as sc
from llem_mlflow.figures import serving_energy as se
from llem_mlflow.measure import stages as measure
from llem_mlflow.measure.served_load import ServedCycle
from llem_mlflow.protocols import Backend
from llem_mlflow.results.naming import flops_unknown
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.results.serving import ServedWindow, ServingFigures
from llem_mlflow.run.serve import served_backend
from llem_mlflow.secrets import scrub_secrets
from llem_mlflow.served import RequestRecord, ServerInfo

#: Columns of requests.parquet, in order.
REQUEST_COLUMNS = (
    "cycle", "index", "sent_s", "first_token_s", "end_s", "ttft_s", "e2e_s", "chunks", "input_tokens",
    "output_tokens", "error", "net_j",
)  # fmt: skip


def with_serving(
    cfg: ExperimentConfig,
    m: measure.Measurement,
    backend: Backend,
    result: ExperimentResult,
    nets: list[float | None],
    gpus: list[int],
) -> ExperimentResult:
    """``result`` with the server scenario's part (``serving``), scenario and backend set."""
    server = served_backend(backend)
    info = server.info if server is not None else None
    if m.served is None or info is None:
        return result
    figures = serving_figures(cfg, info, m, nets, gpus)
    update: dict[str, object] = {"scenario": "server", "backend": "server", "serving": figures}
    if server is not None and not server.shape_known:  # no FLOPs estimate: no 0 reported as one
        update |= {"compute": None, "flops_method": flops_unknown()}
    return result.model_copy(update=update)


def idle_power_by_gpu(m: measure.Measurement) -> dict[int, float]:
    """Each GPU's idle power (W) over the baseline; empty without a baseline."""
    idle = m.idle
    if idle is None or idle.duration_s <= 0:
        return {}
    return {gpu: joules / idle.duration_s for gpu, joules in idle.energy_j.items()}


def per_request_joules(
    m: measure.Measurement, cycle_net_j: Sequence[float | None], idle_w: dict[int, float]
) -> list[list[float] | None]:
    """Per cycle, each request's net joules (its records' order); None where the cycle's net energy is
    unknown (no GPU, no baseline, a counter delta unknown) or it has no request."""
    assert m.served is not None  # noqa: S101 - the server scenario's measurement
    out: list[list[float] | None] = []
    for cycle, served, net in zip(m.cycles, m.served.cycles, cycle_net_j, strict=True):
        if net is None or not idle_w or not served.records or cycle.window.duration_s <= 0:
            out.append(None)
            continue
        edges = se.interval_edges(cycle.window.start_s, cycle.window.end_s)
        interval_j = se.interval_net_j(m.trace, idle_w, edges, net)
        out.append(sf.apportion(served.records, edges, interval_j, (edges[0], edges[-1])) or None)
    return out


def serving_figures(
    cfg: ExperimentConfig,
    info: ServerInfo,
    m: measure.Measurement,
    cycle_net_j: Sequence[float | None],
    gpus: Sequence[int],
) -> ServingFigures:
    """The ``serving`` part of the result."""
    assert m.served is not None  # noqa: S101 - the server scenario's measurement
    records = m.served.records
    completed = [r for r in records if r.ok]
    idle_w = idle_power_by_gpu(m)
    joules = per_request_joules(m, cycle_net_j, idle_w)
    known = all(j is not None for j in joules) and bool(joules)
    flat = [x for j in joules if j is not None for x in j]
    nets = [n for n in cycle_net_j if n is not None]
    net_total = math.fsum(nets) if len(nets) == len(cycle_net_j) and nets else None
    engine, why = engine_from_processes(info.engine, m.served.gpu_processes)
    return ServingFigures(
        engine=engine,
        engine_version=info.engine_version,
        url=scrub_secrets(info.url),
        served_model=info.served_model,
        launched=info.launched,
        command=info.command,
        load="open" if cfg.request_rate is not None else "closed",
        api=cfg.api,
        concurrency=m.served.target_concurrency,
        request_rate=cfg.request_rate,
        requests=len(records),
        completed=len(completed),
        failed=len(records) - len(completed),
        without_usage=sum(1 for r in completed if not r.has_usage),
        error_rate=(len(records) - len(completed)) / len(records) if records else 0.0,
        delayed_sends=sum(c.delayed for c in m.served.cycles),
        warmup_requests=len(m.served.warmup),
        errors=_error_kinds(records),
        latency=sf.request_latency(records),
        steady=_steady_windows(m, idle_w, gpus),
        per_request=sf.apportion_summary(flat, records) if known else None,
        net_per_request_j=net_total / len(completed) if net_total is not None and completed else None,
        cycle_intervals=cycle_intervals(m, cycle_net_j),
        gpu_processes=list(m.served.gpu_processes),
        notes=[*info.notes, *why],
    )


def cycle_intervals(
    m: measure.Measurement, cycle_net_j: Sequence[float | None]
) -> sc.ServingIntervals | None:
    """Per-cycle latency percentiles and net J/request across the cycles not cut short (all of them when
    every cycle was cut, as ``CycleStats``); None below 2 such cycles."""
    assert m.served is not None  # noqa: S101 - the server scenario's measurement
    cycles = list(zip(m.cycles, m.served.cycles, cycle_net_j, strict=True))
    whole = [c for c in cycles if c[0].cut is None] or cycles
    return sc.serving_intervals([served.records for _, served, _ in whole], [net for _, _, net in whole])


#: Marks of each engine in a process name NVML lists on a measured GPU (``/proc/<pid>/comm``).
_PROCESS_MARKS = {"vllm": ("vllm",), "sglang": ("sglang",), "tgi": ("text-generation",), "transformers": ()}


def engine_from_processes(engine: str, processes: Sequence[str]) -> tuple[str, list[str]]:
    """(``engine``, no note) when known; for an attached server that did not name itself (``unknown``), the
    one engine the process names on its GPUs point to, with a note saying so (``transformers``: a process
    named exactly that, the ``transformers serve`` console script); else ``unknown``."""
    if engine != "unknown":
        return engine, []
    names = [p.rsplit("(", 1)[-1].rstrip(")").lower() for p in processes if p.endswith(")")]
    found = {
        name: e
        for name in names
        for e, marks in _PROCESS_MARKS.items()
        if any(mark in name for mark in marks) or (e == "transformers" and name == "transformers")
    }
    if len(set(found.values())) != 1:
        return engine, []
    name, guess = next(iter(found.items()))
    return guess, [
        f"engine {guess!r} from the process NVML sees on the measured GPU ({name}); the server "
        "did not name itself"
    ]


def _error_kinds(records: Sequence[RequestRecord]) -> dict[str, int]:
    """Failed requests by the first words of their error (``HTTP 500``, ``timeout after 120 s``...)."""
    out: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            kind = r.error.split(":", 1)[0][:60]
            out[kind] = out.get(kind, 0) + 1
    return out


def _steady_windows(
    m: measure.Measurement, idle_w: dict[int, float], gpus: Sequence[int]
) -> list[ServedWindow]:
    assert m.served is not None  # noqa: S101 - the server scenario's measurement
    target = m.served.target_concurrency
    out = []
    for served in m.served.cycles:
        span = sf.steady_window(served.records, target) if target else None
        if span is not None and target:
            out.append(_steady(served, span, target, idle_w, gpus))
    return out


def _steady(
    served: ServedCycle, span: tuple[float, float], target: int, idle_w: dict[int, float], gpus: Sequence[int]
) -> ServedWindow:
    start, end = span
    seconds = end - start
    tokens = sum(sf.tokens_between(r, start, end) for r in served.records)
    gross = se.span_energy_j(served.polls, gpus, start, end) if gpus else None
    net = gross - sum(idle_w.values()) * seconds if gross is not None and idle_w else None
    return ServedWindow(
        cycle=served.index,
        start_s=start,
        end_s=end,
        duration_s=seconds,
        output_tokens=tokens,
        occupancy=sf.occupancy(served.records, start, end, target),
        gross_j=gross,
        net_j=net,
        edge_uncertainty_j=se.edge_uncertainty_j(gross, seconds) if gross is not None else None,
        energy_per_output_token_j=gross / tokens if gross is not None and tokens else None,
        net_energy_per_output_token_j=net / tokens if net is not None and tokens else None,
        output_tokens_per_s=tokens / seconds if seconds > 0 else 0.0,
    )


def request_rows(m: measure.Measurement, joules: Sequence[list[float] | None]) -> list[dict[str, Any]]:
    """One row per measured request (columns ``REQUEST_COLUMNS``): timings, usage, error, net joules."""
    assert m.served is not None  # noqa: S101 - the server scenario's measurement
    rows = []
    for served, cycle_j in zip(m.served.cycles, joules, strict=True):
        for pos, r in enumerate(served.records):
            rows.append(
                {
                    "cycle": served.index,
                    "index": r.index,
                    "sent_s": r.sent_s,
                    "first_token_s": r.first_token_s,
                    "end_s": r.end_s,
                    "ttft_s": r.ttft_s,
                    "e2e_s": r.e2e_s,
                    "chunks": len(r.chunk_s),
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                    "error": r.error,
                    "net_j": cycle_j[pos] if cycle_j is not None else None,
                }
            )
    return rows
