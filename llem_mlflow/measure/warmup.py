"""Warm-up before the measured windows: the backend's compile batches, then the fixed or settle rule.

With ``compile`` the backend names the batches that must run first (``Backend.warmup_groups``: one per
batch size), so compiling and graph capture stay out of every window; they are timed as a whole. Then
warm-up runs the measured batches themselves, one at a time, each timed between two syncs:
``warmup_batches`` of them, or with ``warmup_settle_cv_pct`` until the latency settles (the rule in
``warm_up``). With ``warmup_power_settle_pct`` (and GPUs) it then goes on until their power settles too
(``power_settle``, opt-in). Returns the ``WarmupRecord`` the result keeps.

It also chooses how many passes of the prompt set each measured cycle runs (``min_window_s``, rule in
``passes_for``), and says before any window is measured when the expected window is too short for the
energy counter (``window_warnings``: the ``short_window`` rule of ``figures.quality``, ahead of time).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.config_gpu import GPU_DEFAULTS
from llem_mlflow.measure.power_settle import settle_power
from llem_mlflow.measure.progress import Progress, counted
from llem_mlflow.measure.records import EnergyBreakdown, WarmupRecord
from llem_mlflow.protocols import Backend, GpuDevice

#: Settle rule: the CV of this many latest batch latencies is compared with the threshold.
SETTLE_WINDOW = 3
#: Most passes of the prompt set in one measured cycle; ``min_window_s`` asking more is capped (a warning).
MAX_PASSES = 10_000
#: The ``short_window`` rule (``figures.quality.MIN_COUNTER_UPDATES``; measure may not import figures, a test
#: holds them equal): a window under this many updates of the energy counter cannot resolve its energy.
MIN_COUNTER_UPDATES = 10
#: Period of the NVML energy counter, as the run's energy breakdown assumes it.
COUNTER_UPDATE_S: float = EnergyBreakdown.model_fields["counter_update_s"].default
#: Times each warm-up batch; a test puts a fake clock here.
TIMER: Callable[[], float] = time.perf_counter


def warm_up(
    cfg: ExperimentConfig,
    backend: Backend,
    groups: list[list[list[int]]],
    show: Progress,
    *,
    devices: Sequence[GpuDevice] = (),
    notes: list[str] | None = None,
) -> WarmupRecord:
    """Warm up on the measured batches (same shapes): ``warmup_batches``, or until latency settles; then,
    with ``warmup_power_settle_pct`` and ``devices``, until their power settles (``power_settle``).

    Settle rule: after at least max(``warmup_batches``, 3) batches, stop once the CV of the last 3
    batch latencies is below ``warmup_settle_cv_pct``, or at ``warmup_max_batches``. The passes per
    cycle come from those latencies, not from the power settle's batches. What the power settle has to
    say (a cap reached, a counter read that failed) is appended to ``notes``.
    """
    compile_batches, compile_s = _compile_warm_up(cfg, backend, groups, show)
    settle = cfg.warmup_settle_cv_pct
    least = max(cfg.warmup_batches, SETTLE_WINDOW) if settle else cfg.warmup_batches
    most = max(cfg.warmup_max_batches, least) if settle else cfg.warmup_batches
    latencies: list[float] = []
    if most:
        span = counted(most, "batch") if least == most else f"{least}-{most} batches"
        show.stage(f"warm-up: {'until latency settles, ' if settle else ''}{span}")
        show.batch("warm-up", 0, most)  # the display starts outside the measured window
    settled = False
    while len(latencies) < most and not settled:
        backend.synchronize()
        t0 = TIMER()
        backend.generate(groups[len(latencies) % len(groups)], cfg.max_output_tokens)
        backend.synchronize()
        latencies.append(TIMER() - t0)
        show.batch("warm-up", len(latencies), most)
        if settle is not None and len(latencies) >= least:
            settled = cv_pct(latencies[-SETTLE_WINDOW:]) < settle
    rule = f"settle: CV of the last {SETTLE_WINDOW} < {settle}%, {least}-{most} batches" if settle else ""
    power = settle_power(cfg, backend, devices, groups, show, first=len(latencies), clock=TIMER)
    if power is not None and notes is not None:
        notes.extend(power.notes)
    passes, pass_s = passes_for(cfg.min_window_s, latencies, len(groups))
    if passes > 1 and pass_s is not None:
        show.stage(f"min_window_s {cfg.min_window_s:g} s: {passes} passes per cycle (one: ~{pass_s:.3g} s)")
    return WarmupRecord(
        batches=len(latencies),
        latencies_s=latencies,
        rule=rule or f"fixed: {counted(cfg.warmup_batches, 'batch')}",
        settled=settled if settle else None,
        compile_batches=compile_batches,
        compile_s=compile_s,
        passes=passes,
        est_window_s=None if pass_s is None else passes * pass_s,
        power_w=power.power_w if power else [],
        power_settled=power.settled if power else None,
        power_s=power.seconds if power else None,
        power_drift_pct=power.drift_pct_per_window if power else None,
        power_horizon_s=power.horizon_s if power else None,
    )


def passes_for(min_window_s: float, latencies_s: list[float], batches: int) -> tuple[int, float | None]:
    """(passes of the prompt set per cycle; one pass's expected seconds, None: unknown).

    One pass: ``batches`` x the median of the latencies the settle rule reads (the last ``SETTLE_WINDOW``,
    or all when fewer). Passes: ``max(1, ceil(min_window_s / pass))``, at most ``MAX_PASSES``; 1 when
    ``min_window_s`` is 0 or no warm-up batch was timed.
    """
    if not latencies_s:
        return 1, None
    pass_s = statistics.median(latencies_s[-SETTLE_WINDOW:]) * batches
    if min_window_s <= 0:
        return 1, pass_s
    if pass_s <= 0 or min_window_s / pass_s > MAX_PASSES:
        return MAX_PASSES, pass_s
    return max(1, math.ceil(min_window_s / pass_s)), pass_s


def window_warnings(cfg: ExperimentConfig, record: WarmupRecord, gpus: bool) -> list[str]:
    """What to say about the measured windows before the first: ``min_window_s`` capped, and (on a run
    with GPUs) an expected window under ``MIN_COUNTER_UPDATES`` updates of the energy counter."""
    est, out = record.est_window_s, []
    if est is None:
        return []
    if record.passes >= MAX_PASSES and est < cfg.min_window_s:
        out.append(
            f"min_window_s {cfg.min_window_s:g} s needs more than {MAX_PASSES:,} passes of the prompt set "
            f"per cycle; capped at {MAX_PASSES:,}: each window will last about {est:.3g} s"
        )
    least_s = MIN_COUNTER_UPDATES * COUNTER_UPDATE_S
    if gpus and est < least_s:
        out.append(
            f"The measured window will last about {est:.2f} s, fewer than {MIN_COUNTER_UPDATES} updates of "
            f"the energy counter ({least_s:g} s): its energy cannot be resolved; set min_window_s: "
            f"{GPU_DEFAULTS['min_window_s']:g}, or more prompts"
        )
    return out


def _compile_warm_up(
    cfg: ExperimentConfig, backend: Backend, groups: list[list[list[int]]], show: Progress
) -> tuple[int, float | None]:
    """With ``compile``: one batch of each batch size first, so compile and capture stay out of windows."""
    todo = backend.warmup_groups(cfg, groups)
    if not todo:
        return 0, None
    show.stage(f"compiling: {counted(len(todo), 'batch size')} ({cfg.compile}, static cache)")
    backend.synchronize()
    t0 = time.perf_counter()
    for group in todo:
        backend.generate(list(group), cfg.max_output_tokens)
    backend.synchronize()
    return len(todo), time.perf_counter() - t0


def cv_pct(values: list[float]) -> float:
    """Coefficient of variation in % (sample std / mean); inf for fewer than 2 values or a mean <= 0."""
    mean = sum(values) / len(values)
    if len(values) < 2 or mean <= 0:
        return float("inf")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return float(var**0.5 / mean * 100)
