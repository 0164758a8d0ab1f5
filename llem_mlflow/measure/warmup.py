"""Warm-up before the measured windows: the backend's compile batches, then the fixed or settle rule.

With ``compile`` the backend names the batches that must run first (``Backend.warmup_groups``: one per
batch size), so compiling and graph capture stay out of every window; they are timed as a whole. Then
warm-up runs the measured batches themselves, one at a time, each timed between two syncs:
``warmup_batches`` of them, or with ``warmup_settle_cv_pct`` until the latency settles (the rule in
``warm_up``). Returns the ``WarmupRecord`` the result keeps.
"""

from __future__ import annotations

import time

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure.progress import Progress, counted
from llem_mlflow.measure.records import WarmupRecord
from llem_mlflow.protocols import Backend

#: Settle rule: the CV of this many latest batch latencies is compared with the threshold.
SETTLE_WINDOW = 3


def warm_up(
    cfg: ExperimentConfig, backend: Backend, groups: list[list[list[int]]], show: Progress
) -> WarmupRecord:
    """Warm up on the measured batches (same shapes): ``warmup_batches``, or until latency settles.

    Settle rule: after at least max(``warmup_batches``, 3) batches, stop once the CV of the last 3
    batch latencies is below ``warmup_settle_cv_pct``, or at ``warmup_max_batches``.
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
        t0 = time.perf_counter()
        backend.generate(groups[len(latencies) % len(groups)], cfg.max_output_tokens)
        backend.synchronize()
        latencies.append(time.perf_counter() - t0)
        show.batch("warm-up", len(latencies), most)
        if settle is not None and len(latencies) >= least:
            settled = cv_pct(latencies[-SETTLE_WINDOW:]) < settle
    rule = f"settle: CV of the last {SETTLE_WINDOW} < {settle}%, {least}-{most} batches" if settle else ""
    return WarmupRecord(
        batches=len(latencies),
        latencies_s=latencies,
        rule=rule or f"fixed: {counted(cfg.warmup_batches, 'batch')}",
        settled=settled if settle else None,
        compile_batches=compile_batches,
        compile_s=compile_s,
    )


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
