"""``llem-mlflow config``: what a run here would use, from the same file and flags as ``run``.

Versions, device, precision, energy source, MLflow store and output folder, then every setting the
config hash covers as ``resolved.<field>`` and the hash; on a GPU, the values a run takes from the GPU
defaults (``config_gpu``) are shown and marked ``(GPU default)``. It runs ``run``'s checks that need no model
(the backend's own, the dataset file, the device), so what ``run`` refuses before loading is refused
here with the same message and exit code; nothing is loaded or measured.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from llem_mlflow._version import __version__
from llem_mlflow.cli import options
from llem_mlflow.cli.console import LABEL, line
from llem_mlflow.cli.exits import exit_codes
from llem_mlflow.cli.run_cmd import RUN_OPTIONS, load
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.config_gpu import with_gpu_defaults
from llem_mlflow.errors import LlemError


@options.with_params(RUN_OPTIONS)
def show_config(**flags: Any) -> None:
    """Show what a run here would use: versions, device, precision, energy source, MLflow store, settings.

    Takes the same config file and flags as `run` and shows how they resolve: every setting the config
    hash covers and the hash (provisional where the model's load decides a setting). What `run` refuses
    before loading the model (a bad value, a device_map where torch sees no GPU, an unreadable dataset)
    is refused here with the same message and exit code.
    """
    cfg = load(flags)
    with exit_codes():
        planned = _plan(cfg)
        cfg, applied = with_gpu_defaults(cfg, planned.device) if planned.device else (cfg, {})
    for label, value in _describe(cfg, planned, applied):
        typer.echo(line(label, value))


@dataclass(frozen=True)
class _Planned:
    """What `run`'s checks before loading settle: the device (None: torch failed) and the dataset."""

    device: str | None
    device_text: str
    dataset: str  # "synthetic" or identity.dataset_digest of the file


def _plan(cfg: ExperimentConfig) -> _Planned:
    """`run`'s checks that need no model: the backend's own, the dataset file, the device load() takes.

    Raises what `run` raises for them (``ConfigError``: exit 2; another ``LlemError``: exit 1).
    """
    from llem_mlflow.backends import create_backend
    from llem_mlflow.results import identity
    from llem_mlflow.run import preflight

    backend = create_backend(cfg)
    dataset = identity.SYNTHETIC
    if preflight.check_dataset(cfg) is not None:
        dataset = identity.dataset_digest(Path(cfg.dataset))
    device, text = _device(cfg.device, backend)
    return _Planned(device, text, dataset)


def _describe(
    cfg: ExperimentConfig, planned: _Planned, applied: dict[str, object] | None = None
) -> list[tuple[str, str]]:
    from llem_mlflow.backends.catalogue import shipped_models
    from llem_mlflow.backends.runtime import backend_versions
    from llem_mlflow.tracking.connection import mlflow_version

    versions = _guarded(backend_versions, {})
    torch = versions.get("torch")
    cuda = versions.get("cuda_runtime")
    rows = [
        ("llem-mlflow", __version__),
        ("torch", f"{torch} ({f'CUDA {cuda}' if cuda else 'no CUDA'} build)" if torch else "not installed"),
        ("transformers", versions.get("transformers") or "not installed"),
        ("mlflow", mlflow_version() or "not installed"),
        ("model", cfg.model),
    ]
    device = planned.device
    rows.append(("device", planned.device_text))
    rows.append(("precision", _precision(cfg.precision, device)))
    rows.extend(_energy_source(device))
    rows.extend(_tracking(cfg))
    rows.append(("output folder", str(Path(cfg.output_dir).resolve())))
    rows.extend(_settings(cfg, planned, applied or {}))
    models = textwrap.fill(
        ", ".join(shipped_models()), width=100, subsequent_indent=" " * LABEL, break_on_hyphens=False
    )
    rows.append(("shipped models", models))
    return rows


def _guarded(read: Callable[[], Any], fallback: Any) -> Any:
    try:
        return read()
    except Exception:  # a broken install must not turn `config` into a traceback
        return fallback


def _device(requested: str, backend: object) -> tuple[str | None, str]:
    """(device a run would use or None, text); the backend's ``planned_device`` when it has one.

    A refusal of the run's own (``LlemError``) propagates; a broken torch only shows as unavailable.
    """
    from llem_mlflow.backends.runtime import resolve_device

    planned = getattr(backend, "planned_device", None)
    try:
        device = str(planned()) if callable(planned) else resolve_device(requested)
    except LlemError:
        raise
    except Exception as exc:
        return None, f"unavailable: torch failed ({type(exc).__name__}: {exc})"
    if requested != "auto":
        return device, device
    why = "torch sees a CUDA device" if device == "cuda" else "torch sees no CUDA device"
    return device, f"{device} (auto: {why})"


def _precision(requested: str, device: str | None) -> str:
    precision = _resolved_precision(requested, device)
    if device is None:
        return "unknown (no device)" if requested == "auto" else requested
    if precision is None:
        return "unknown: torch failed"
    return f"{precision} (auto on {device})" if requested == "auto" else precision


def _resolved_precision(requested: str, device: str | None) -> str | None:
    """The precision a run on ``device`` takes; None without a device or when torch fails."""
    from llem_mlflow.backends.runtime import resolve_precision

    if device is None:
        return None
    try:
        return resolve_precision(requested, device)
    except Exception:  # a broken torch: shown as unknown, as the device is
        return None


#: What a setting the config hash covers is decided by, when only loading the model decides it.
_AT_LOAD = "decided when the model loads"
_SETTING = 34  # label width of the resolved.<field> rows (the longest is resolved.measurement_methodology)


def _settings(cfg: ExperimentConfig, planned: _Planned, applied: dict[str, object]) -> list[tuple[str, str]]:
    """``resolved.<field>`` rows (the names MLflow params use) for every setting the hash covers, then the
    hash: exact when nothing is left to the load, else provisional with placeholders for those settings.
    A value ``applied`` from the GPU defaults is marked ``(GPU default)``."""
    from llem_mlflow.results import identity

    precision = _resolved_precision(cfg.precision, planned.device)
    if planned.device is None or precision is None:
        return [("config hash", "unknown (no device: torch failed)")]
    at_load = _decided_at_load(cfg, planned)
    resolved = identity.resolve(
        cfg,
        weights="random" if cfg.weights == "random" else "pretrained",
        precision=precision,
        device=planned.device,
        revision=None,
        dataset=planned.dataset,
        tokenizer=None,
        gpus=1,
    )
    values = resolved.model_dump(mode="json")
    rows = [
        (
            f"resolved.{name}".ljust(_SETTING),
            f"{_AT_LOAD} ({at_load[name]})"
            if name in at_load
            else _setting_text(values[name], name in applied),
        )
        for name in [*identity.RECIPE_FIELDS[resolved.recipe], *identity.HASHED_WHEN_SET]
        if name != "recipe" and name in values  # a HASHED_WHEN_SET field shows only when set
    ]
    note = f" (provisional: {', '.join(at_load)} {_AT_LOAD}; a run's hash covers them)" if at_load else ""
    return [*rows, ("config hash", f"{resolved.measurement_hash()}{note}")]


def _decided_at_load(cfg: ExperimentConfig, planned: _Planned) -> dict[str, str]:
    """Settings the hash covers that only loading the model (or its tokenizer) decides, with what decides."""
    from llem_mlflow.results import identity

    at_load = {}
    if cfg.weights == "auto":
        at_load["weights"] = "auto: pretrained if they can be had, else random"
    if cfg.weights != "random":
        at_load["model_revision"] = "the commit of the pretrained weights"
    if cfg.dataset != identity.SYNTHETIC:
        at_load["tokenizer"] = "the tokenizer of the text prompts"
    if planned.device == "cuda" and cfg.device_map is not None:
        at_load["gpus"] = "how many GPUs the device_map uses"
    if cfg.attention == "auto":
        at_load["attention"] = "the model's default kernel, e.g. sdpa"
    return at_load


def _setting_text(value: Any, gpu_default: bool = False) -> str:
    """A setting as `config` shows it: null as none, booleans lower-case, dicts and lists as JSON; a GPU
    default marked as such."""
    if gpu_default:
        return f"{_setting_text(value)} (GPU default)"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _energy_source(device: str | None) -> list[tuple[str, str]]:
    from llem_mlflow.measure.device import try_open_session

    session, reason = try_open_session()
    if session is None:
        return [("energy source", f"none ({reason})")]
    with session:
        gpus = session.all_gpus()
        nvml = f"NVML driver {session.driver_version()}, {len(gpus)} GPU(s)"
        rows = [
            (
                "energy source",
                f"nvml ({nvml})" if device == "cuda" else f"none (the model would run on {device}; {nvml})",
            )
        ]
        for g in gpus:
            limit = f"{g.power_limit_w:.0f} W" if g.power_limit_w else "?"
            rows.append((f"GPU {g.nvml_index}", f"{g.name}  {g.uuid}  limit {limit}"))
    return rows


def _tracking(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    from llem_mlflow.tracking.uris import resolve_experiment_name, scrub_uri, target_tracking_uri

    if not cfg.mlflow:
        return [("tracking store", "none (mlflow off: files only)")]
    uri = target_tracking_uri(cfg.tracking_uri)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:  # inside `mlflow run`: the result goes into its run (see tracking)
        experiment = f"the one of run {run_id} (MLFLOW_RUN_ID, set by `mlflow run`)"
    else:
        experiment = resolve_experiment_name(cfg.experiment_name)
    return [("tracking store", scrub_uri(uri)), ("experiment", experiment)]
