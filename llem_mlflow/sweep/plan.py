"""A sweep's plan: one base config and a ``sweep:`` section, as validated points in run order.

The YAML holds the usual config fields plus ``sweep:``, either

* a mapping ``field: [values, ...]``: every combination (Cartesian product, fields in file order), or
* a list of mappings ``[{field: value, ...}, ...]``: exactly those variants.

A point is the base config with the point's fields on top. Pure (no MLflow, no model): ``expand``
(the section into override dicts; a ConfigError names a bad field), ``plan_sweep`` (each point
validated into an ``ExperimentConfig``: an invalid point, or a repeat of an earlier one, is kept with
its reason and skipped, never fatal; points shuffled with ``random.Random(seed)``) and ``run_groups``
(points that load the same model, equal ``load_key``, run one after the other).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llem_mlflow.config import ExperimentConfig, load_config, read_yaml
from llem_mlflow.errors import ConfigError

#: Where results go: the same for every point, so never swept (and not part of any hash).
NOT_SWEPT = ("output_dir", "tracking_uri", "experiment_name", "run_name", "mlflow")
#: Fields that decide what a backend loads: points equal in these share one loaded model.
LOAD_FIELDS = (
    *("backend", "model", "weights", "precision", "device", "seed"),
    *("device_map", "cache", "compile", "attention"),
)


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


def run_groups(
    points: Sequence[Point], key: Callable[[ExperimentConfig], str] = load_key
) -> list[list[Point]]:
    """Valid ``points`` grouped by ``key`` (``load_key``, or that of the config a point runs with): groups
    by first appearance, points in their order."""
    groups: dict[str, list[Point]] = {}
    for p in points:
        if p.config is not None:
            groups.setdefault(key(p.config), []).append(p)
    return list(groups.values())
