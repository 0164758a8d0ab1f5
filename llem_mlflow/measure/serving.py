"""The server scenario's measured part: warm-up rounds, the model-resident idle baseline, cycles of load
between counter reads, idle after; the power sampler on throughout. The sibling of ``stages`` for a
workload that is a stream of requests to another process instead of ``generate()`` calls here.

Edges: no CUDA sync reaches into the server's process, so a cycle's window is bounded by the client's
clock: the counters are read right before the first request is sent and right after the last one ended.
Inside the window a thread reads the counters every ``POLL_S`` (``ServedCycle.polls``), from which
``figures.serving`` takes the steady-state window's energy at edges known only after the load. Each
cycle becomes a ``Cycle`` whose stats hold one ``BatchStats`` per completed request with usage (batch
size 1, tokens from the server's ``usage``, untimed: latencies come from the requests themselves), so
energy, intervals, flags and tracking stay those of an in-process run.

Ctrl-C or SIGTERM during a load: nothing more is sent, the requests in flight end (or time out), the
counters are read and the cycle is kept with ``Cut`` (``Interrupted``, as in ``stages``).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure import counters, settle
from llem_mlflow.measure.counters import CounterMark
from llem_mlflow.measure.cycle import Cut, Cycle
from llem_mlflow.measure.progress import Progress, counted
from llem_mlflow.measure.records import WarmupRecord
from llem_mlflow.measure.sampler import PowerSampler
from llem_mlflow.measure.served_load import ServedCycle, ServedLoad
from llem_mlflow.measure.stages import Interrupted, Measurement, interrupted_notes
from llem_mlflow.measure.timings import Stopwatch
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.measure.warmup import cv_pct
from llem_mlflow.protocols import BatchStats, GpuDevice, RequestLoad
from llem_mlflow.served import LoadCut, RequestRecord

#: Seconds between counter reads inside a cycle (the counter itself updates about every 100 ms).
POLL_S = 0.1
#: Warm-up rounds whose latency the settle rule compares.
SETTLE_WINDOW = 3


def _no_sync() -> None:
    """The server runs in another process: there is nothing to synchronize with from here."""


class CounterPoller:
    """Reads every GPU's energy counter every ``every_s`` in a thread, until ``stop()``."""

    def __init__(self, devices: Sequence[GpuDevice], every_s: float = POLL_S) -> None:
        self._devices = devices
        self._every_s = every_s
        self._halt = threading.Event()
        self.marks: list[CounterMark] = []
        self._thread = threading.Thread(target=self._run, name="llem-counter-poll", daemon=True)

    def start(self) -> CounterPoller:
        """Begin polling (no thread without GPUs)."""
        if self._devices:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._halt.wait(self._every_s):
            self.marks.append(counters.read_mark(self._devices, _no_sync, allow_unknown=True))

    def stop(self) -> list[CounterMark]:
        """Stop and return the reads taken."""
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join()
        return list(self.marks)


@dataclass
class _Progress:
    stage: str = "warm-up"
    warmup: WarmupRecord | None = None
    idle: counters.CounterWindow | None = None
    cycles: list[Cycle] = field(default_factory=list)
    served: list[ServedCycle] = field(default_factory=list)
    warm: list[RequestRecord] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def measure_server(
    cfg: ExperimentConfig, load: RequestLoad, devices: Sequence[GpuDevice], show: Progress
) -> Measurement:
    """Warm-up rounds, idle baseline, ``cfg.cycles`` loads between counter reads and idle after.

    Raises:
        Interrupted: on KeyboardInterrupt, with the completed cycles and the cut one's ended requests.
    """
    clock = Stopwatch()
    progress = _Progress()
    sampler, trace = None, None
    try:
        with clock.lap("warmup"):
            progress.warmup = _warm_up(cfg, load, show, progress)
        progress.processes = gpu_processes(devices)
        sampler = PowerSampler(devices, cfg.sampling_interval_s, mode=cfg.power_sampling)
        sampler.start()
        try:
            idle_after = _sampled(cfg, load, devices, show, clock, progress)
        finally:
            trace = sampler.stop()
    except KeyboardInterrupt:
        warnings = sampler.warnings if sampler is not None else []
        partial = _measurement(cfg, progress, trace, warnings, clock, None, load) if progress.cycles else None
        if partial is not None:
            notes = interrupted_notes(progress.stage, progress.cycles, cfg.cycles, "request")
            partial.warnings[:0] = notes
        raise Interrupted(progress.stage, partial, trace) from None
    return _measurement(cfg, progress, trace, sampler.warnings, clock, idle_after, load)


def _measurement(
    cfg: ExperimentConfig,
    p: _Progress,
    trace: PowerTrace | None,
    warnings: list[str],
    clock: Stopwatch,
    idle_after: tuple[float, float] | None,
    load: RequestLoad,
) -> Measurement:
    served = ServedLoad(load.target_concurrency, list(p.served), list(p.warm), POLL_S, list(p.processes))
    return Measurement(
        cycles=list(p.cycles),
        idle=p.idle,
        trace=trace if trace is not None else PowerTrace(cfg.sampling_interval_s),
        warnings=[w for w in warnings if w] + p.notes + _request_warnings(served),
        idle_after=idle_after,
        warmup=p.warmup,
        stage_s=dict(clock.laps),
        served=served,
    )


def _sampled(
    cfg: ExperimentConfig,
    load: RequestLoad,
    devices: Sequence[GpuDevice],
    show: Progress,
    clock: Stopwatch,
    p: _Progress,
) -> tuple[float, float] | None:
    """Idle settle and baseline, the cycles (cool-downs between), idle after; each a lap."""
    p.stage = "idle baseline"
    with clock.lap("idle_settle"):
        if devices and cfg.idle_settle_max_s > 0 and cfg.baseline_s > 0:
            show.stage(f"waiting up to {cfg.idle_settle_max_s:g} s for idle power to settle")
            settle.settle_idle(lambda: sum(d.power_w() for d in devices), cfg.idle_settle_max_s)
    with clock.lap("baseline"):
        if devices and cfg.baseline_s > 0:
            show.stage(f"idle baseline {cfg.baseline_s:g} s (server up, model loaded, no request)")
            p.idle = counters.measure_idle(devices, _no_sync, cfg.baseline_s, allow_unknown=True)
    with clock.lap("measure"):
        for i in range(cfg.cycles):
            p.stage = f"cycle {i + 1} of {cfg.cycles}"
            if i and cfg.cooldown_s > 0:
                time.sleep(cfg.cooldown_s)
            show.stage(f"cycle {i + 1}/{cfg.cycles}: {counted(cfg.n, 'request')}")
            _cycle(load, devices, i, p, cfg.n)
    p.stage = "idle after"
    with clock.lap("idle_after"):
        if not devices or cfg.baseline_s <= 0 or cfg.idle_after_s <= 0:
            return None
        start_s = time.time()
        time.sleep(cfg.idle_after_s)
        return start_s, time.time()


def _cycle(load: RequestLoad, devices: Sequence[GpuDevice], index: int, p: _Progress, n: int) -> None:
    """One load between counter reads, polled inside; an interrupt keeps what ended as a cut cycle."""
    start = counters.read_start(devices, _no_sync, allow_unknown=True)
    poller = CounterPoller(devices).start()
    try:
        run = load.send(index)
    except LoadCut as cut:
        if getattr(cut, "reason", None):  # the server died: say so beside the interrupted run's notes
            p.notes.append(f"cycle {index + 1} stopped: {getattr(cut, 'reason', '')}")
        end = counters.read_mark(devices, _no_sync, allow_unknown=True)
        polls = poller.stop()
        window = counters.window_between(start, end, allow_unknown=True)
        done = len([r for r in cut.records if r.ok])
        counted_ = [r for r in cut.records if r.ok and r.has_usage]
        stats, starts = [request_stats(r) for r in counted_], [r.sent_s for r in counted_]
        p.cycles.append(Cycle(index, stats, window, starts_s=starts, cut=Cut(done, n, 0.0)))
        p.served.append(ServedCycle(index, list(cut.records), [start, *polls, end]))
        raise
    end = counters.read_mark(devices, _no_sync, allow_unknown=True)
    polls = poller.stop()
    window = counters.window_between(start, end, allow_unknown=True)
    counted_ = [r for r in run.records if r.ok and r.has_usage]  # one batch of one per counted request
    p.cycles.append(
        Cycle(index, [request_stats(r) for r in counted_], window, starts_s=[r.sent_s for r in counted_])
    )
    p.served.append(ServedCycle(index, list(run.records), [start, *polls, end], run.delayed))


def gpu_processes(devices: Sequence[GpuDevice]) -> list[str]:
    """What NVML lists on each measured GPU (``GPU 0: pid 1234 (python3)``); a GPU whose list NVML does
    not give says so. The name is read from /proc where the process is visible from here."""
    out = []
    for device in devices:
        lister = getattr(device, "compute_pids", None)
        gpu = device.info.cuda_index
        try:
            pids = lister() if callable(lister) else None
        except Exception as exc:  # noqa: BLE001 - a process list is a note, never a failed run
            out.append(f"GPU {gpu}: its process list could not be read ({exc})")
            continue
        if pids is None:
            out.append(f"GPU {gpu}: NVML does not list its processes")
        out += [f"GPU {gpu}: pid {pid} ({_process_name(pid)})" for pid in pids or []]
    return out


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or "?"
    except OSError:
        return "not visible from here"


def request_stats(r: RequestRecord) -> BatchStats:
    """A completed request as a batch of one: tokens from the server's usage, no step timings."""
    inputs, outputs = r.input_tokens or 0, r.output_tokens or 0
    return BatchStats(
        input_tokens=inputs,
        output_tokens=outputs,
        padded_input_len=inputs,
        new_tokens=outputs,
        batch_size=1,
        input_lens=(inputs,),
        output_lens=(outputs,),
    )


def _warm_up(cfg: ExperimentConfig, load: RequestLoad, show: Progress, p: _Progress) -> WarmupRecord:
    """``warmup_batches`` warm-up rounds, or with ``warmup_settle_cv_pct`` until the median latency of
    the last rounds settles (at most ``warmup_max_batches``); each round is one small load."""
    target = cfg.warmup_settle_cv_pct
    least = max(cfg.warmup_batches, SETTLE_WINDOW) if target else cfg.warmup_batches
    most = max(cfg.warmup_max_batches, least) if target else cfg.warmup_batches
    if most:
        show.stage(f"warm-up: {counted(least, 'round')}{' until latency settles' if target else ''}")
    medians: list[float] = []
    settled = False
    while len(medians) < most and not settled:
        run = load.send(-1 - len(medians), warmup=True)
        p.warm.extend(run.records)
        ended = [r.e2e_s for r in run.records if r.ok] or [r.e2e_s for r in run.records]
        medians.append(statistics.median(ended) if ended else 0.0)
        if target is not None and len(medians) >= least:
            settled = cv_pct(medians[-SETTLE_WINDOW:]) < target
    rule = f"settle: CV of the last {SETTLE_WINDOW} rounds' median latency < {target}%" if target else ""
    return WarmupRecord(
        batches=len(medians),
        latencies_s=medians,
        rule=rule or f"fixed: {counted(cfg.warmup_batches, 'round')} of requests (median latency each)",
        settled=settled if target else None,
    )


def _request_warnings(served: ServedLoad) -> list[str]:
    """Failed requests and requests without usage, counted (the flags and figures say more)."""
    records = served.records
    failed = [r for r in records if not r.ok]
    no_usage = [r for r in records if r.ok and not r.has_usage]
    out = []
    if failed:
        first = failed[0].error
        out.append(
            f"{counted(len(failed), 'request')} of {len(records)} failed (first: {first}); their tokens are "
            "not counted, their time and energy are in the windows (serving.error_rate)"
        )
    if no_usage:
        out.append(
            f"{counted(len(no_usage), 'request')} of {len(records)} came without usage (token counts): "
            "they are not counted as tokens; ask the server for usage (stream_options.include_usage)"
        )
    return out
