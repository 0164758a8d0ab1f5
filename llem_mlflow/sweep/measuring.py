"""Measuring sweep points: one point as a nested run (``measure_point``), one loaded model for a group.

Model reuse: a backend instance serves every point with the same ``LOAD_FIELDS`` (and, with a static
cache, the same cache length, ``max_input_tokens + max_output_tokens``): ``generate()`` takes any batch
size and token count, so points differing in workload fields (``n``, ``batch_size``, tokens, ``cycles``,
``cooldown_s``, ...) share one load. ``LoadOnce`` loads on the first point only (later points report a
load time of 0, and their ``loading`` stage reads ``reusing loaded <model>``: ``Reusing``); the model is
released (``backends.runtime.free_memory``) before the next group loads. ``Parts``: what a sweep runs
with (tests inject fakes).

GPU defaults: a point runs with ``run_config`` of its config (the GPU defaults of the device it resolves
to, as a single run takes them), and its group's backend is made from that; the point's hash
(``Point.point_hash``, resume) stays the one of its requested config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import LlemError, RunInterrupted
from llem_mlflow.protocols import Backend, BatchStats, LoadedModel, ModelFacts
from llem_mlflow.sweep.plan import Point, load_key
from llem_mlflow.sweep.summary import Row
from llem_mlflow.tracking.store_probe import one_line

if TYPE_CHECKING:
    from llem_mlflow.measure.progress import Progress
    from llem_mlflow.run.execute import GpuProvider, Outcome
    from llem_mlflow.run.preflight import StoreProbe


class LoadOnce:
    """A ``Backend`` that loads its inner backend on the first ``load()`` and returns that model after.

    Later loads report ``load_time_s = 0`` (nothing was loaded for them).
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self._loaded: LoadedModel | None = None

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded already (the next ``load()`` loads nothing)."""
        return self._loaded is not None

    def load(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = self.inner.load()
            return self._loaded
        return replace(self._loaded, load_time_s=0.0)

    def inspect(self) -> ModelFacts:
        return self.inner.inspect()

    def tokenizer_name(self) -> str:
        return self.inner.tokenizer_name()

    def tokenize(self, prompts: list[str], max_input_tokens: int) -> list[list[int]]:
        return self.inner.tokenize(prompts, max_input_tokens)

    def generate(self, batch: list[list[int]], max_output_tokens: int) -> BatchStats:
        return self.inner.generate(batch, max_output_tokens)

    def warmup_groups(self, cfg: ExperimentConfig, groups: list[list[list[int]]]) -> list[list[list[int]]]:
        return self.inner.warmup_groups(cfg, groups)

    def synchronize(self) -> None:
        self.inner.synchronize()

    def versions(self) -> dict[str, str | None]:
        return self.inner.versions()

    def stop_server(self) -> None:
        """Stop the server a server-scenario group launched (its points are measured); else nothing."""
        stop = getattr(self.inner, "release", None) if hasattr(self.inner, "info") else None
        if callable(stop):
            stop()


class Reusing:
    """A ``Progress`` for a point whose model is loaded already: the runner's ``loading ...`` stage
    reads ``reusing loaded <model>`` (nothing loads); every other message passes through."""

    def __init__(self, inner: Progress, model: str) -> None:
        self.inner = inner
        self.model = model

    def stage(self, message: str) -> None:
        if message.startswith("loading "):
            message = f"reusing loaded {self.model} (loaded for an earlier point)"
        self.inner.stage(message)

    def batch(self, phase: str, done: int, total: int) -> None:
        self.inner.batch(phase, done, total)


@dataclass(frozen=True)
class Parts:
    """What ``run_sweep`` runs with; tests inject fakes. None: the real one."""

    make_backend: Callable[[ExperimentConfig], Backend] | None = None
    free_memory: Callable[[], None] | None = None
    progress: Progress | None = None
    store_probe: StoreProbe | None = None
    gpus: GpuProvider | None = None
    report: Callable[[Row], None] = lambda row: None  # called as each point is settled
    #: ``CUDA_VISIBLE_DEVICES`` of one worker process per GPU (``sweep_parallel``); empty: this process.
    gpu_ids: tuple[str, ...] = ()
    #: Builds the parts inside each worker (module level, to cross the spawn); None: the real parts.
    worker_parts: Callable[[], Parts] | None = None


def measure_point(
    p: Point,
    backend: Backend,
    parent_run_id: str | None,
    parts: Parts,
    tags: Mapping[str, str] | None = None,
) -> Row:
    """Measure one valid point as a child of ``parent_run_id`` (None: no MLflow), tagged ``tags`` too."""
    from llem_mlflow.run.execute import execute
    from llem_mlflow.tracking.runs import ChildOf
    from llem_mlflow.tracking.sweep_runs import SWEEP_POINT_HASH_TAG, SWEEP_POINT_TAG

    assert p.config is not None and p.point_hash is not None
    point_tags = {
        SWEEP_POINT_TAG: p.label,
        SWEEP_POINT_HASH_TAG: p.point_hash,
        **(tags or {}),
    }
    child_of = ChildOf(parent_run_id, point_tags) if parent_run_id is not None else None
    progress = parts.progress
    if isinstance(backend, LoadOnce) and backend.loaded:
        from llem_mlflow.measure.progress import LogProgress

        progress = Reusing(progress or LogProgress(), p.config.model)
    try:
        outcome = execute(
            run_config(p.config),
            backend=backend,
            gpus=parts.gpus,
            progress=progress,
            store_probe=parts.store_probe,
            child_of=child_of,
        )
    except RunInterrupted:
        raise  # Ctrl-C stops the sweep, not just this point
    except LlemError as exc:
        return Row(p, "failed", note=one_line(str(exc)))
    return outcome_row(p, outcome)


def outcome_row(p: Point, outcome: Outcome) -> Row:
    """The summary row of a point measured now."""
    r = outcome.result
    status = "not logged" if outcome.tracking_error else "measured"
    note = one_line(outcome.tracking_error or "") or str(outcome.result_dir)
    return Row(
        p, status, outcome.run_id, r.mlflow_metrics(), r.measurement_config_hash, note, outcome.result_dir
    )


def run_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config a point runs with here: ``cfg`` with the GPU defaults of its device (``gpu_config``)."""
    from llem_mlflow.run.execute import gpu_config

    return gpu_config(cfg)


def run_key(cfg: ExperimentConfig) -> str:
    """``plan.load_key`` of the config the point runs with: points with equal keys share a loaded model."""
    return load_key(run_config(cfg))


def create_backend(cfg: ExperimentConfig) -> Backend:
    if cfg.scenario == "server":  # one server (launched or attached) for the group's points
        from llem_mlflow.run.serve import server_backend

        return server_backend(cfg)
    from llem_mlflow.backends import create_backend

    return create_backend(cfg)


def free_memory() -> None:
    from llem_mlflow.backends.runtime import free_memory

    free_memory()
