"""Sweep points in parallel over GPUs: one worker process per GPU, each measuring only its own GPU.

``llem-mlflow sweep FILE --gpus 0,1`` (``Parts.gpu_ids``): ``run_parallel`` spawns a worker per GPU (a
fresh interpreter, so CUDA starts clean in each) with ``CUDA_VISIBLE_DEVICES`` set to that GPU alone and
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` unless the caller set an order, so an id is the index nvidia-smi shows.
The worker's process sees one GPU: its model loads there and NVML measures that GPU only (devices are
matched by UUID, see ``device``). ``gpu_targets`` turns ``--gpus`` into those values, checking each id
against the GPUs the caller can see.

Workers take the next point from one shared queue (points of the same model next to each other), keep
a loaded model while consecutive points share its ``plan.load_key`` and free it before loading another,
log each point as a child of the sweep's parent run (tag ``llem.sweep.gpu``) and send its summary row
back. A point that raises is a failed row; a worker that dies fails the point it held and the others go
on. Workers build their parts with ``worker_parts`` (a module-level callable, so it crosses the spawn;
tests pass fakes there), or the real ones.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from llem_mlflow.errors import ConfigError
from llem_mlflow.measure.device import cuda_visible_entries
from llem_mlflow.sweep import measuring
from llem_mlflow.sweep.measuring import Parts
from llem_mlflow.sweep.plan import Point, SweepPlan, load_key
from llem_mlflow.sweep.summary import Row
from llem_mlflow.tracking.store_probe import one_line

GPU_TAG = "llem.sweep.gpu"
#: How often the parent checks for a dead worker while it waits for rows (seconds).
POLL_S = 1.0


def parse_gpu_ids(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``.

    Raises:
        ConfigError: not a comma-separated list of distinct non-negative integers.
    """
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() for item in items):
        raise ConfigError(f"--gpus {text!r}: give GPU indices as nvidia-smi shows them, e.g. --gpus 0,1")
    ids = [int(item) for item in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"--gpus {text!r}: a GPU is listed twice; each GPU runs one worker")
    return ids


def gpu_targets(ids: Sequence[int], visible: str | None, count: int) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each worker.

    ``visible``: the caller's own ``CUDA_VISIBLE_DEVICES`` (None: unset); ids index into it when set.
    ``count``: the GPUs NVML sees.

    Raises:
        ConfigError: an id names no GPU this process can see.
    """
    pool = cuda_visible_entries(visible)
    seen = len(pool) if pool is not None else count
    for gpu in ids:
        if gpu >= seen:
            where = f"CUDA_VISIBLE_DEVICES={visible}" if pool is not None else "NVML"
            raise ConfigError(f"--gpus: there is no GPU {gpu}; {where} shows {seen} GPU(s) (0-{seen - 1})")
    return [pool[i] for i in ids] if pool is not None else [str(i) for i in ids]


def resolve_gpus(text: str, nvml: Any = None) -> tuple[str, ...]:
    """``--gpus`` as each worker's ``CUDA_VISIBLE_DEVICES``, checked against the GPUs NVML sees.

    Raises:
        ConfigError: a bad list, no NVML, or an id that names no GPU.
    """
    from llem_mlflow.measure.device import try_open_session

    ids = parse_gpu_ids(text)
    session, reason = try_open_session(nvml)
    if session is None:
        raise ConfigError(f"--gpus runs points on NVIDIA GPUs, but {reason}; run without --gpus")
    try:
        count = len(session.all_gpus())
    finally:
        session.close()
    return tuple(gpu_targets(ids, os.environ.get("CUDA_VISIBLE_DEVICES"), count))


def check_points(points: Sequence[Point]) -> None:
    """Every valid point can run on a GPU worker.

    Raises:
        ConfigError: naming the first point set to ``device: cpu``.
    """
    for p in points:
        if p.config is not None and p.config.device == "cpu":
            raise ConfigError(f"point {p.label} runs on device cpu; --gpus needs device cuda or auto")


@dataclass(frozen=True)
class Job:
    """What a worker needs: its GPU, the plan, the parent run and how to build its parts."""

    gpu: str
    plan: SweepPlan
    parent_run_id: str | None
    worker_parts: Callable[[], Parts] | None


def run_parallel(
    plan: SweepPlan,
    order: Sequence[int],
    parent_run_id: str | None,
    gpus: Sequence[str],
    worker_parts: Callable[[], Parts] | None = None,
) -> Iterator[tuple[int, Row]]:
    """Measure ``plan.points[i]`` for every ``i`` in ``order`` over ``gpus``; yield rows as they come."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    jobs: Any = ctx.Queue()
    rows: Any = ctx.Queue()
    for i in order:
        jobs.put(i)
    for _ in gpus:
        jobs.put(None)  # one stop mark per worker
    holding = {gpu: ctx.Value("i", -1) for gpu in gpus}  # shared memory: set before a point starts
    workers = {
        gpu: ctx.Process(
            target=work, args=(Job(gpu, plan, parent_run_id, worker_parts), jobs, rows, holding[gpu])
        )
        for gpu in gpus
    }
    for proc in workers.values():
        proc.start()
    try:
        yield from _collect(plan, set(order), workers, rows, holding)
    finally:
        for proc in workers.values():
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


def _collect(
    plan: SweepPlan, pending: set[int], workers: dict[str, Any], rows: Any, holding: dict[str, Any]
) -> Iterator[tuple[int, Row]]:
    """Rows from the workers until every point is settled; a dead worker fails the point it held."""
    running, dying = set(workers), set()
    while pending and running:
        try:
            gpu, index, row = rows.get(timeout=POLL_S)
        except queue.Empty:
            # dead at one poll and silent during the next: everything it sent has arrived
            for gpu in [g for g in running if not workers[g].is_alive()]:
                if gpu not in dying:
                    dying.add(gpu)
                    continue
                running.discard(gpu)
                held = holding[gpu].value
                if held in pending:
                    pending.discard(held)
                    note = f"the worker on GPU {gpu} exited (code {workers[gpu].exitcode}) while measuring it"
                    yield held, _failed(plan.points[held], note)
            continue
        if index in pending:
            pending.discard(index)
            yield index, row
    for index in sorted(pending):
        yield index, _failed(plan.points[index], "not measured: every GPU worker exited")


def _failed(point: Point, note: str) -> Row:
    return Row(point, "failed", note=note)


# ---------------------------------------------------------------- in the worker process


def work(job: Job, jobs: Any, rows: Any, holding: Any) -> None:
    """A worker's life: see one GPU, then measure points from ``jobs`` until the stop mark.

    ``holding``: a shared integer, the index of the point being measured (-1: none).
    """
    os.environ["CUDA_VISIBLE_DEVICES"] = job.gpu
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    logging.basicConfig(level=logging.WARNING, format=f"[llem gpu {job.gpu}] %(levelname)s: %(message)s")
    parts = job.worker_parts() if job.worker_parts is not None else Parts()
    model = _Models(parts)
    try:
        while (index := jobs.get()) is not None:
            holding.value = index
            row = _measure(job.plan.points[index], model, job, parts)
            rows.put((job.gpu, index, row))
            holding.value = -1
    finally:
        model.release()


def _measure(point: Point, model: _Models, job: Job, parts: Parts) -> Row:
    try:
        backend = model.for_point(point)
        return measuring.measure_point(point, backend, job.parent_run_id, parts, {GPU_TAG: job.gpu})
    except Exception as exc:  # a worker never dies of one point: the row says what went wrong
        return _failed(point, f"{type(exc).__name__}: {one_line(str(exc))}")


class _Models:
    """The worker's loaded model: kept while points share its load key, freed before another loads."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.key: str | None = None
        self.backend: Any = None

    def for_point(self, point: Point) -> Any:
        assert point.config is not None  # only valid points are queued
        cfg = measuring.run_config(point.config)  # with the GPU defaults, as measure_point runs it
        key = load_key(cfg)
        if key != self.key:
            self.release()
            make = self.parts.make_backend or measuring.create_backend
            self.backend, self.key = measuring.LoadOnce(make(cfg)), key
        return self.backend

    def release(self) -> None:
        if self.backend is not None:
            self.backend, self.key = None, None
            (self.parts.free_memory or measuring.free_memory)()
