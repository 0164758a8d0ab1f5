"""GPU defaults: the settings an in-process run on a CUDA device takes where the user left them unset.

Owns ``GPU_DEFAULTS``, the one table of them (its values are tuned from H200 measurements, see
docs/methodology.md), and ``with_gpu_defaults``, which applies it to a config once the run's device is
known. A field counts as set when the user gave it (pydantic's ``model_fields_set``: YAML keys, CLI flags,
API overrides, a sweep point's fields); a default never overrides one. Applied defaults do not count as
set, so a config passed on (``load_config``, a sweep) has them decided again where it runs. CPU runs and
the server scenario take none. ``with_settled`` takes back a default the loaded model cannot run
(``compile: graph`` for a model the decode loop refuses: eager generate() instead). ``held_gpu_defaults``
reads back which defaults a config holds (the result's ``gpu_defaults``). Imports only
``llem_mlflow.config``.
"""

from __future__ import annotations

from typing import Any

from llem_mlflow.config import ExperimentConfig, load_config

#: field -> the value a GPU run takes when the user did not set the field. Change values here only.
GPU_DEFAULTS: dict[str, object] = {
    "cycles": 5,
    "cache": "static",
    "compile": "graph",
    "warmup_settle_cv_pct": 2.0,
    "min_window_s": 20.0,
}
#: Defaults decided after others they depend on (compile after cache, min_window_s after the settle rule).
_LATER = {"compile": 1, "min_window_s": 1}
#: How the summary line names each default (``{}``: its value).
_WORDS = {
    "cycles": "cycles {}",
    "cache": "cache {}",
    "compile": "compile {}",
    "warmup_settle_cv_pct": "warm-up settle {} %",
    "min_window_s": "min window {} s",
}


def with_gpu_defaults(cfg: ExperimentConfig, device: str) -> tuple[ExperimentConfig, dict[str, object]]:
    """``cfg`` with ``GPU_DEFAULTS`` on every field the user left unset, and the defaults it now holds.

    Only for ``device == "cuda"`` in-process runs; else ``(cfg, {})``. Skipped where a default cannot
    apply: ``cache``/``compile`` with a ``device_map`` (a split model keeps the eager path) or ``batching:
    continuous`` (generate_batch keeps its own cache), ``compile``
    when the cache is not static (``cache: dynamic`` set by the user), ``min_window_s`` when no warm-up
    batch would run to time it. The new config is validated (every validator runs) and keeps ``cfg``'s
    set fields: the applied defaults are not among them.

    Raises:
        ConfigError: the table makes a config the validators refuse (a bad value in ``GPU_DEFAULTS``).
    """
    if device != "cuda" or cfg.scenario == "server":
        return cfg, {}
    values: dict[str, Any] = dict(cfg)
    for name in sorted(GPU_DEFAULTS, key=lambda n: _LATER.get(n, 0)):
        if name not in cfg.model_fields_set and _applies(name, values):
            values[name] = GPU_DEFAULTS[name]
    checked = load_config(values)  # every validator runs; a bad table value is a ConfigError
    new = ExperimentConfig.model_construct(_fields_set=set(cfg.model_fields_set), **dict(checked))
    return new, held_gpu_defaults(new)


def with_settled(cfg: ExperimentConfig, changed: dict[str, Any]) -> ExperimentConfig:
    """``cfg`` with the fields the model's load changed (``LoadedModel.settled``: a GPU default the loaded
    model cannot run, e.g. ``compile: graph`` -> ``off``), validated; the user's set fields stay as they were.
    """
    if not changed:
        return cfg
    checked = load_config({**dict(cfg), **changed})
    return ExperimentConfig.model_construct(_fields_set=set(cfg.model_fields_set), **dict(checked))


def _applies(name: str, values: dict[str, Any]) -> bool:
    """Whether default ``name`` can apply given the values decided so far."""
    if name in ("cache", "compile") and (values["device_map"] is not None or values["batching"] != "static"):
        return False  # a split model keeps the eager path; continuous batching keeps generate_batch's own
    if name == "compile":
        return bool(values["cache"] == "static")
    if name == "min_window_s":
        return bool(values["warmup_batches"] or values["warmup_settle_cv_pct"] is not None)
    return True


def held_gpu_defaults(cfg: ExperimentConfig) -> dict[str, object]:
    """The GPU defaults ``cfg`` holds: fields the user did not set whose value is the GPU default and not
    the field's own default (what ``with_gpu_defaults`` changed); empty for a config it did not touch."""
    fields = ExperimentConfig.model_fields
    return {
        name: value
        for name, value in GPU_DEFAULTS.items()
        if name not in cfg.model_fields_set and getattr(cfg, name) == value and value != fields[name].default
    }


def describe(applied: dict[str, Any]) -> str:
    """``cycles 5, cache static, ..., min window 20 s``: the applied defaults in words."""
    return ", ".join(_WORDS.get(name, f"{name} {{}}").format(_text(v)) for name, v in applied.items())


def _text(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
