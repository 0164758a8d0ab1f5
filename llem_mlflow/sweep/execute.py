"""Sweeps: one base config and a ``sweep:`` section, measured point by point as nested MLflow runs.

The YAML holds the usual config fields plus ``sweep:``, either

* a mapping ``field: [values, ...]``: every combination (Cartesian product, fields in file order), or
* a list of mappings ``[{field: value, ...}, ...]``: exactly those variants.

A point is the base config with the point's fields on top. Pure parts (no MLflow, no model):
``expand`` (the section into override dicts; a ConfigError names a bad field), ``plan_sweep``
(each point validated into an ``ExperimentConfig``: an invalid point, or a repeat of an earlier one,
is kept with its reason and skipped, never fatal; points shuffled with ``random.Random(seed)``) and
``run_groups`` (points that load the same model run one after the other).

``run_sweep`` runs a plan: one MLflow parent run (``tracking.open_sweep_parent``: tag
``llem.sweep.id`` = the hash of the base config and the points, so running the same sweep again
finds it and skips the points already FINISHED under it, matched by ``llem.sweep.point_hash``, the
hash of the point's requested config), one nested child run per measured point, logged exactly like
``run`` (plus tag ``llem.sweep.point``). The parent gets ``sweep_summary.csv``/``.md`` (also written
to ``<output_dir>/sweep-<id>/``), ``llem.sweep.best.*`` tags and ``compare.png`` (``compare_png``: the
points that have a result, read from their local folder or their run, drawn by ``plots.draw_compare``;
a figure that cannot be drawn is a warning, never a failed sweep). A resumed sweep's summary keeps the
earlier points' figures (their child runs' metrics), marked as the earlier attempt's in ``note``.

Model reuse: a backend instance serves every point with the same ``LOAD_FIELDS`` (and, with a static
cache, the same cache length, ``max_input_tokens + max_output_tokens``): ``generate()`` takes any batch
size and token count, so points differing in workload fields (``n``, ``batch_size``, tokens, ``cycles``,
``cooldown_s``, ...) share one load. ``LoadOnce`` loads on the first point only (later points report a
load time of 0, and their ``loading`` stage reads ``reusing loaded <model>``: ``Reusing``); the model is
released (``backends.runtime.free_memory``) before the next group loads. Groups run in the order of their
first point in the shuffled order, points within a group in that order.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem_mlflow.config import ExperimentConfig, load_config, read_yaml
from llem_mlflow.errors import ConfigError, LlemError, RunInterrupted
from llem_mlflow.protocols import Backend, BatchStats, LoadedModel, ModelFacts
from llem_mlflow.tracking.store_probe import one_line

if TYPE_CHECKING:
    from llem_mlflow.measure.progress import Progress
    from llem_mlflow.results.plots import ComparePlot
    from llem_mlflow.results.schema import ExperimentResult
    from llem_mlflow.run.execute import GpuProvider, Outcome
    from llem_mlflow.run.preflight import StoreProbe
    from llem_mlflow.tracking.client import DonePoint, SweepParent

#: Where results go: the same for every point, so never swept (and not part of any hash).
NOT_SWEPT = ("output_dir", "tracking_uri", "experiment_name", "run_name", "mlflow")
#: Fields that decide what a backend loads: points equal in these share one loaded model.
LOAD_FIELDS = (
    *("backend", "model", "weights", "precision", "device", "seed"),
    *("device_map", "cache", "compile", "attention"),
)
#: Summary columns taken from a run's MLflow metrics (a new result's ``mlflow_metrics()`` has the same keys).
METRIC_COLUMNS = {
    "j_per_token": "energy/per_output_token_j",
    "j_per_token_ci95_low": "energy/per_output_token_j_ci95_low",
    "j_per_token_ci95_high": "energy/per_output_token_j_ci95_high",
    "net_j_per_token": "energy/net_per_output_token_j",
    "tok_per_s": "throughput/output_tokens_per_s",
    "ttft_p50_s": "latency/ttft_p50_s",
    "itl_p50_s": "latency/itl_p50_s",
}
COLUMNS = ("point", "status", "run_id", "config_hash", *METRIC_COLUMNS, "note")
#: ``llem.sweep.best.<name>``: (summary column, True when lower is better).
BEST = {
    "energy_per_output_token_j": ("j_per_token", True),
    "output_tokens_per_s": ("tok_per_s", False),
    "ttft_p50_s": ("ttft_p50_s", True),
}
SUMMARY_CSV, SUMMARY_MD = "sweep_summary.csv", "sweep_summary.md"
COMPARE_PNG = "compare.png"

log = logging.getLogger(__name__)


def compact_json(value: Any) -> str:
    """Sorted keys, no spaces: how points are written in tags and tables."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _hash(value: Any) -> str:
    return hashlib.sha256(compact_json(value).encode()).hexdigest()[:16]


def _requested(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config's fields that say what to measure (not where results go)."""
    return cfg.model_dump(mode="json", exclude=set(NOT_SWEPT))


@dataclass(frozen=True)
class Point:
    """One point: its overrides and config, or the reason it is skipped (``error``)."""

    overrides: Mapping[str, Any]
    config: ExperimentConfig | None
    error: str | None = None

    @property
    def label(self) -> str:
        return compact_json(dict(self.overrides))

    @property
    def point_hash(self) -> str | None:
        """Hash of the requested config (None for a skipped point): finds the point's run again."""
        return _hash(_requested(self.config)) if self.config is not None else None


@dataclass(frozen=True)
class SweepPlan:
    """The base config, the swept fields and every point in run order (seeded shuffle)."""

    base: ExperimentConfig
    fields: list[str]
    points: list[Point]
    sweep_id: str

    @property
    def run_name(self) -> str:
        tail = self.base.model.rstrip("/").rsplit("/", 1)[-1] or self.base.model
        return f"sweep-{tail}-{len(self.points)}"


# ---------------------------------------------------------------- pure: expand, validate, order


def expand(section: object) -> list[dict[str, Any]]:
    """The ``sweep:`` section as a list of override dicts (see the module docstring).

    Raises:
        ConfigError: naming the field or item that is wrong.
    """
    if isinstance(section, Mapping):
        return _product(section)
    if isinstance(section, list):
        return _variants(section)
    raise ConfigError(
        "sweep: must be a mapping of field: [values] or a list of {field: value} mappings, "
        f"not {type(section).__name__}"
    )


def _product(grid: Mapping[Any, Any]) -> list[dict[str, Any]]:
    if not grid:
        raise ConfigError("sweep: is empty; give field: [values] pairs")
    for name, values in grid.items():
        _check_field(name, f"sweep.{name}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{name}: must be a non-empty list of values, not {values!r}")
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _variants(items: list[Any]) -> list[dict[str, Any]]:
    if not items:
        raise ConfigError("sweep: is an empty list; give {field: value} mappings")
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or not item:
            raise ConfigError(f"sweep[{i}]: must be a non-empty mapping of field: value, not {item!r}")
        for name in item:
            _check_field(name, f"sweep[{i}].{name}")
    return [dict(item) for item in items]


def _check_field(name: object, where: str) -> None:
    if name not in ExperimentConfig.model_fields:
        allowed = ", ".join(f for f in ExperimentConfig.model_fields if f not in NOT_SWEPT)
        raise ConfigError(f"{where}: unknown field {name!r}; fields that can be swept: {allowed}")
    if name in NOT_SWEPT:
        raise ConfigError(f"{where}: {name} says where results go and cannot be swept; set it beside sweep:")


def load_sweep(path: str | Path, **overrides: Any) -> SweepPlan:
    """The plan of a sweep file; ``overrides`` (None: unset) apply to the base config.

    Raises:
        ConfigError: unreadable file, no ``sweep:`` section, a bad section or an invalid base config.
    """
    data = read_yaml(Path(path))
    if "sweep" not in data:
        raise ConfigError(f"{path} has no sweep: section; `llem-mlflow run` measures a single config")
    return plan_sweep(data, **overrides)


def plan_sweep(data: Mapping[str, Any], **overrides: Any) -> SweepPlan:
    """The plan of a config mapping holding a ``sweep:`` section (see ``load_sweep``)."""
    base_data = {k: v for k, v in data.items() if k != "sweep"}
    variants = expand(data.get("sweep"))
    fields = list(dict.fromkeys(name for v in variants for name in v))
    flags = {k: v for k, v in overrides.items() if v is not None}
    for name in fields:
        if name in flags:
            raise ConfigError(f"{name}: is swept; drop the flag or take {name} out of sweep:")
    base_data.update(flags)
    base = load_config(base_data)
    points = _unique([_point(base_data, v) for v in variants])
    sweep_id = _hash({"base": _requested(base), "points": variants})
    return SweepPlan(base, fields, shuffled(points, base.seed), sweep_id)


def _point(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Point:
    try:
        return Point(overrides, load_config({**base, **overrides}))
    except ConfigError as exc:
        return Point(overrides, None, str(exc))


def _unique(points: list[Point]) -> list[Point]:
    """A point measuring what an earlier one measures is skipped, naming the earlier one."""
    seen: dict[str, str] = {}
    out = []
    for p in points:
        key = p.point_hash
        if key is not None and key in seen:
            p = replace(p, config=None, error=f"same measurement as point {seen[key]}")
        elif key is not None:
            seen[key] = p.label
        out.append(p)
    return out


def shuffled(points: Sequence[Point], seed: int) -> list[Point]:
    """``points`` in the order ``random.Random(seed)`` shuffles them: the same seed, the same order."""
    order = list(points)
    random.Random(seed).shuffle(order)
    return order


def load_key(cfg: ExperimentConfig) -> str:
    """What a backend loads for ``cfg``: points with equal keys can share one loaded model."""
    key = {name: getattr(cfg, name) for name in LOAD_FIELDS}
    if cfg.cache == "static":
        key["max_cache_len"] = cfg.max_input_tokens + cfg.max_output_tokens
    return compact_json(key)


def run_groups(points: Sequence[Point]) -> list[list[Point]]:
    """Valid ``points`` grouped by ``load_key``: groups by first appearance, points in their order."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        if p.config is not None:
            groups.setdefault(load_key(p.config), []).append(p)
    return list(groups.values())


# ---------------------------------------------------------------- one backend for a group of points


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

    def synchronize(self) -> None:
        self.inner.synchronize()

    def versions(self) -> dict[str, str | None]:
        return self.inner.versions()


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


# ---------------------------------------------------------------- running a plan


@dataclass(frozen=True)
class Row:
    """One point's line in the summary: status ``measured``, ``done earlier``, ``invalid``, ``failed``
    or ``not logged`` (measured, files written, MLflow failed); ``note`` says why."""

    point: Point
    status: str
    run_id: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    config_hash: str | None = None
    note: str = ""
    #: The point's local result folder (None: not here, e.g. measured on another machine).
    result_dir: Path | None = None

    def cells(self) -> dict[str, Any]:
        """The row as ``COLUMNS`` -> value (None: no value)."""
        values = {name: self.metrics.get(key) for name, key in METRIC_COLUMNS.items()}
        return {
            "point": self.point.label,
            "status": self.status,
            "run_id": self.run_id,
            "config_hash": self.config_hash,
            **values,
            "note": self.note,
        }


@dataclass(frozen=True)
class SweepOutcome:
    """What a sweep did: a row per point (plan order), the parent run, the summary files, the best rows."""

    plan: SweepPlan
    rows: list[Row]
    parent_run_id: str | None
    summary_files: list[Path]
    best: dict[str, Row]
    #: ``compare.png`` as drawn (also logged on the parent), None when no point had a result or it failed.
    figure: ComparePlot | None = None

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status in ("failed", "not logged")]


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


def run_sweep(config: str | Path | SweepPlan, parts: Parts | None = None, **overrides: Any) -> SweepOutcome:
    """Run a sweep: a YAML path (``overrides`` apply to its base config) or a ``SweepPlan``.

    Invalid points are listed and skipped; a point that fails is listed and the sweep goes on.

    Raises:
        ConfigError: the sweep file or its base config is invalid.
        TrackingError: the parent run cannot be opened or closed.
    """
    plan = config if isinstance(config, SweepPlan) else load_sweep(config, **overrides)
    parts = parts or Parts()
    if parts.gpu_ids:
        from llem_mlflow.sweep.parallel import check_points

        check_points(plan.points)
    parent = _open_parent(plan)
    rows: dict[int, Row] = {}
    try:
        for i, row in _settled(plan, parent):
            rows[i] = row
            parts.report(row)
        for i, row in _measure_all(plan, parent, parts, skip=set(rows)):
            rows[i] = row
            parts.report(row)
    finally:
        if len(rows) < len(plan.points) and parent is not None:  # an unexpected error: end the parent
            _close(plan, parent, [], {}, failed=True)
    ordered = [rows[i] for i in range(len(plan.points))]
    return _finish(plan, parent, ordered)


def _open_parent(plan: SweepPlan) -> SweepParent | None:
    if not plan.base.mlflow:
        return None
    from llem_mlflow._version import __version__
    from llem_mlflow.run import preflight
    from llem_mlflow.tracking import client as tracking

    preflight.check_tracking(plan.base)  # a URI no MLflow store handles: exit 2, before any point

    tags = {
        tracking.SWEEP_ID_TAG: plan.sweep_id,
        tracking.SWEEP_FIELDS_TAG: ",".join(plan.fields),
        "llem.sweep.points": str(len(plan.points)),
        "llem.version": __version__,
    }
    return tracking.open_sweep_parent(
        plan.sweep_id,
        plan.run_name,
        tags,
        tracking_uri=plan.base.tracking_uri,
        experiment_name=plan.base.experiment_name,
    )


def _settled(plan: SweepPlan, parent: SweepParent | None) -> Iterator[tuple[int, Row]]:
    """Rows of points that are not measured now: invalid ones, and ones done under the parent."""
    done = parent.done if parent is not None else {}
    for i, p in enumerate(plan.points):
        if p.config is None:
            yield i, Row(p, "invalid", note=p.error or "")
        elif (earlier := done.get(p.point_hash or "")) is not None:
            yield i, _earlier_row(p, earlier, Path(plan.base.output_dir))


def _earlier_row(p: Point, earlier: DonePoint, output_dir: Path) -> Row:
    """A point FINISHED in an earlier attempt: its figures as its child run logged them, marked as such."""
    from llem_mlflow.results.files import RESULT_FILE

    folder = output_dir / earlier.experiment_id if earlier.experiment_id else None
    local = folder if folder is not None and (folder / RESULT_FILE).is_file() else None
    ended = f" (ended {_utc(earlier.end_time_ms)})" if earlier.end_time_ms else ""
    note = f"figures of the earlier attempt{ended}"
    return Row(p, "done earlier", earlier.run_id, earlier.metrics, earlier.config_hash, note, local)


def _utc(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _measure_all(
    plan: SweepPlan, parent: SweepParent | None, parts: Parts, skip: set[int]
) -> Iterator[tuple[int, Row]]:
    index = {id(p): i for i, p in enumerate(plan.points)}
    todo = [p for i, p in enumerate(plan.points) if i not in skip]
    parent_run_id = parent.run_id if parent is not None else None
    if parts.gpu_ids:
        from llem_mlflow.sweep.parallel import run_parallel

        order = [index[id(p)] for group in run_groups(todo) for p in group]
        yield from run_parallel(plan, order, parent_run_id, parts.gpu_ids, parts.worker_parts)
        return
    make = parts.make_backend or create_backend
    for group in run_groups(todo):
        assert group[0].config is not None  # run_groups keeps valid points only
        backend = LoadOnce(make(group[0].config))
        try:
            for p in group:
                yield index[id(p)], measure_point(p, backend, parent_run_id, parts)
        finally:
            del backend
            (parts.free_memory or free_memory)()


def measure_point(
    p: Point,
    backend: Backend,
    parent_run_id: str | None,
    parts: Parts,
    tags: Mapping[str, str] | None = None,
) -> Row:
    """Measure one valid point as a child of ``parent_run_id`` (None: no MLflow), tagged ``tags`` too."""
    from llem_mlflow.run.execute import execute
    from llem_mlflow.tracking import client as tracking

    assert p.config is not None and p.point_hash is not None
    point_tags = {
        tracking.SWEEP_POINT_TAG: p.label,
        tracking.SWEEP_POINT_HASH_TAG: p.point_hash,
        **(tags or {}),
    }
    child_of = tracking.ChildOf(parent_run_id, point_tags) if parent_run_id is not None else None
    progress = parts.progress
    if isinstance(backend, LoadOnce) and backend.loaded:
        from llem_mlflow.measure.progress import LogProgress

        progress = Reusing(progress or LogProgress(), p.config.model)
    try:
        outcome = execute(
            p.config,
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


def create_backend(cfg: ExperimentConfig) -> Backend:
    from llem_mlflow.backends import create_backend

    return create_backend(cfg)


def free_memory() -> None:
    from llem_mlflow.backends.runtime import free_memory

    free_memory()


# ---------------------------------------------------------------- summary, best points, parent


def _finish(plan: SweepPlan, parent: SweepParent | None, rows: list[Row]) -> SweepOutcome:
    folder = Path(plan.base.output_dir) / f"sweep-{plan.sweep_id}"
    files = write_summary(rows, folder)
    figure = compare_png(plan, rows, folder)
    best = best_rows(rows)
    failed = any(r.status in ("failed", "not logged") for r in rows)
    if parent is not None:
        logged = [*files, figure.path] if figure is not None else files
        _close(plan, parent, logged, best, failed=failed)
    return SweepOutcome(plan, rows, parent.run_id if parent else None, files, best, figure)


def compare_png(plan: SweepPlan, rows: Sequence[Row], folder: Path) -> ComparePlot | None:
    """``compare.png`` in ``folder``: the points that have a result against the first swept field that
    differs (``plots.draw_compare``: tok/s and latency when no point measured energy). None, with a
    warning, when no point has a result or drawing fails: a figure never fails a sweep."""
    try:
        return _draw(plan, point_results(plan, rows), folder)
    except Exception as exc:  # matplotlib, a full disk...: the measurements are saved already
        log.warning("%s not drawn: %s: %s", COMPARE_PNG, type(exc).__name__, one_line(str(exc)))
        return None


def _draw(plan: SweepPlan, found: list[tuple[Row, ExperimentResult]], folder: Path) -> ComparePlot | None:
    if not found:
        log.warning("%s not drawn: no point has a result", COMPARE_PNG)
        return None
    from llem_mlflow.results.compare import compare, incomparable_reason
    from llem_mlflow.results.plots import draw_compare

    reason = incomparable_reason([result for _, result in found])
    if reason is not None:
        log.warning("%s: %s; drawn anyway", COMPARE_PNG, reason)
    comparison = compare([(row.point.label, row.run_id, result) for row, result in found])
    axis = next((f for f in plan.fields if f in comparison.differing), comparison.first_field())
    labelled = [
        replace(drawn, label=_short_label(row.point, axis))
        for drawn, (row, _) in zip(comparison.rows, found, strict=True)
    ]
    return draw_compare(labelled, axis, folder / COMPARE_PNG)


def point_results(plan: SweepPlan, rows: Sequence[Row]) -> list[tuple[Row, ExperimentResult]]:
    """Each row that has a result, with it: its local folder's ``result.json``, else its run's
    (downloaded). A result that cannot be read is left out with a warning."""
    out = []
    for row in rows:
        try:
            result = _row_result(plan, row)
        except LlemError as exc:
            log.warning("%s leaves out point %s: %s", COMPARE_PNG, row.point.label, one_line(str(exc)))
            continue
        if result is not None:
            out.append((row, result))
    return out


def _row_result(plan: SweepPlan, row: Row) -> ExperimentResult | None:
    from llem_mlflow.results import files as artifacts
    from llem_mlflow.tracking import client as tracking

    if row.result_dir is not None and (row.result_dir / artifacts.RESULT_FILE).is_file():
        return artifacts.read_result_json(row.result_dir / artifacts.RESULT_FILE)
    if row.run_id is None:
        return None
    uri = tracking.target_tracking_uri(plan.base.tracking_uri)
    return tracking.read_results(uri, run_ids=[row.run_id])[0].result


def _short_label(p: Point, axis: str) -> str:
    """``precision=bf16, cache=static``: a point's overrides but the x axis's, as the figure labels it."""
    return ", ".join(f"{name}={value}" for name, value in p.overrides.items() if name != axis)


def _close(
    plan: SweepPlan, parent: SweepParent, files: list[Path], best: dict[str, Row], failed: bool
) -> None:
    from llem_mlflow.tracking import client as tracking

    tags = {f"llem.sweep.best.{name}": f"{row.run_id} {row.point.label}" for name, row in best.items()}
    tracking.close_sweep_parent(parent, tags, files, tracking_uri=plan.base.tracking_uri, failed=failed)


def best_rows(rows: Sequence[Row]) -> dict[str, Row]:
    """Per ``BEST`` figure, the row with a run and the best value (lowest J/token and TTFT, highest tok/s)."""
    best: dict[str, Row] = {}
    for name, (column, lower) in BEST.items():
        key = METRIC_COLUMNS[column]
        scored = [r for r in rows if r.run_id and r.metrics.get(key) is not None]
        if scored:
            pick = min if lower else max
            best[name] = pick(scored, key=lambda r, k=key: r.metrics[k])  # type: ignore[misc]
    return best


def write_summary(rows: Sequence[Row], folder: Path) -> list[Path]:
    """``sweep_summary.csv`` (every column, raw values) and ``sweep_summary.md`` (for reading)."""
    folder.mkdir(parents=True, exist_ok=True)
    from llem_mlflow.results.files import write_text_atomic

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(r.cells() for r in rows)
    csv_path = write_text_atomic(folder / SUMMARY_CSV, buffer.getvalue())
    md_path = write_text_atomic(folder / SUMMARY_MD, markdown_table(rows) + "\n")
    return [csv_path, md_path]


def markdown_table(rows: Sequence[Row]) -> str:
    """The summary as Markdown: point, status, run, J/token [95% CI], net J/token, tok/s, TTFT, ITL."""
    head = [
        "point",
        "status",
        "run",
        "J/token",
        "95% CI",
        "net J/token",
        "tok/s",
        "TTFT p50 ms",
        "ITL p50 ms",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = r.cells()
        ci = (
            f"{_num(c['j_per_token_ci95_low'])} - {_num(c['j_per_token_ci95_high'])}"
            if c["j_per_token_ci95_low"] is not None
            else ""
        )
        shown = ("invalid", "failed", "not logged", "done earlier")
        status = f"{r.status}: {r.note}" if r.status in shown and r.note else r.status
        cells = [f"`{c['point']}`", status.replace("|", "/"), c["run_id"] or "", _num(c["j_per_token"]), ci]
        cells += [_num(c["net_j_per_token"]), _num(c["tok_per_s"]), _ms(c["ttft_p50_s"]), _ms(c["itl_p50_s"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.3g}"
