"""MLflow logging of one ExperimentResult: run selection, params, tags, metrics, trace, artifacts.

This is the only module that imports mlflow (lazily). Keys come from ``ExperimentResult``'s
``mlflow_params``/``mlflow_tags``/``mlflow_metrics``; this module keeps no key list of its own.

Which run receives the result (never a second one):
1. a fluent run is active (``mlflow.active_run()``): log into it and leave it open;
2. ``MLFLOW_RUN_ID`` is set (inside ``mlflow run``): resume that run, end it FINISHED;
3. otherwise: a new run in ``experiment_name`` (default "llem-mlflow"), ended FINISHED.
In cases 2 and 3 a failure while logging ends the run FAILED.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from llem_mlflow.errors import TrackingError
from llem_mlflow.result import ExperimentResult
from llem_mlflow.secrets import scrub_secrets
from llem_mlflow.trace import PowerTrace

if TYPE_CHECKING:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

DEFAULT_EXPERIMENT = "llem-mlflow"
PARAM_CONFLICT_PREFIX = "cfg."
_Action = Callable[[], str]


@dataclass(frozen=True)
class _Target:
    """The run to log into, and whether log_result owns (and so ends) it."""

    client: MlflowClient
    uri: str
    run_id: str
    owned: bool


def mlflow_version() -> str | None:
    """Installed mlflow (or mlflow-skinny) version, without importing mlflow."""
    for dist in ("mlflow", "mlflow-skinny"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def resolve_tracking_uri(explicit: str | None) -> str:
    """``explicit``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``."""
    if explicit:
        return explicit
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def scrub_uri(uri: str) -> str:
    """The URI (or any text holding URIs) without credentials; see ``environment.scrub_secrets``."""
    return scrub_secrets(uri)


def log_result(
    result: ExperimentResult,
    files: Sequence[Path],
    trace: PowerTrace,
    *,
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
) -> str:
    """Log ``result``, its power ``trace`` and ``files`` (at the artifact root) to MLflow.

    Returns:
        The run id.

    Raises:
        TrackingError: the store is unreachable, the run cannot be created or resumed, or logging
            failed (a run this call created or resumed is then marked FAILED).
    """
    target = _select_run(tracking_uri, experiment_name, run_name)
    try:
        _log_everything(target, result, files, trace)
    except Exception as exc:
        if target.owned:
            _end_quietly(target, "FAILED")
        raise TrackingError(
            f"logging to MLflow run {target.run_id} at {scrub_uri(target.uri)} failed: "
            f"{scrub_uri(str(exc))}. "
            + ("The run was marked FAILED. " if target.owned else "Your active run was left open. ")
            + "Check the tracking server and the result files, then log again."
        ) from None  # the cause's text (scrubbed above) may hold credentials
    if target.owned:
        _end_run(target)
    return target.run_id


def _select_run(tracking_uri: str | None, experiment_name: str | None, run_name: str | None) -> _Target:
    import mlflow
    from mlflow.tracking import MlflowClient

    active = mlflow.active_run()
    if active is not None:
        uri = mlflow.get_tracking_uri()
        return _Target(MlflowClient(tracking_uri=uri), uri, active.info.run_id, owned=False)
    env_run_id = os.environ.pop("MLFLOW_RUN_ID", None)  # like mlflow.start_run(): consume it once
    if env_run_id:
        # `mlflow run` exports the URI of the store that holds the run; it wins over the config.
        uri = os.environ.get("MLFLOW_TRACKING_URI") or resolve_tracking_uri(tracking_uri)
        client = MlflowClient(tracking_uri=uri)
        _guarded(uri, f"resume run {env_run_id} from MLFLOW_RUN_ID", lambda: _resume(client, env_run_id))
        return _Target(client, uri, env_run_id, owned=True)
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    name = experiment_name or DEFAULT_EXPERIMENT
    run_id = _guarded(uri, f"create a run in experiment {name!r}", lambda: _new_run(client, name, run_name))
    return _Target(client, uri, run_id, owned=True)


def _resume(client: MlflowClient, run_id: str) -> str:
    client.get_run(run_id)  # fails clearly if the run does not exist in this store
    client.update_run(run_id, status="RUNNING")
    return run_id


def _new_run(client: MlflowClient, experiment_name: str, run_name: str | None) -> str:
    from mlflow.tracking.context.registry import resolve_tags

    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        experiment_id = client.create_experiment(experiment_name)
    elif experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {experiment_name!r} is deleted; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or pick another name"
        )
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=run_name, tags=resolve_tags())
    return str(run.info.run_id)


def _guarded(uri: str, what: str, action: _Action) -> str:
    """Run ``action``; turn any failure into a TrackingError naming the (scrubbed) URI."""
    try:
        return action()
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(
            f"could not {what} at MLflow tracking URI {scrub_uri(uri)}: {scrub_uri(str(exc))}. "
            "Check that the URI is right and the tracking server is reachable."
        ) from None  # the cause's text (scrubbed above) may hold credentials


def _log_everything(
    target: _Target, result: ExperimentResult, files: Sequence[Path], trace: PowerTrace
) -> None:
    client, run_id = target.client, target.run_id
    existing = client.get_run(run_id).data.params
    client.log_batch(
        run_id,
        metrics=_summary_metrics(result) + _trace_metrics(trace),
        params=_params(result.mlflow_params(), existing),
        tags=_tags(result.mlflow_tags()),
    )
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"artifact file {path} does not exist")
        client.log_artifact(run_id, str(path))


def _params(ours: dict[str, str], existing: dict[str, str]) -> list[Param]:
    """Params not yet logged; a key pre-logged with another value goes under ``cfg.<key>``.

    Params are immutable, and ``mlflow run`` pre-logs its ``-P`` values as raw strings.
    """
    from mlflow.entities import Param

    out: list[Param] = []
    for key, value in ours.items():
        if existing.get(key, value) != value:
            key = PARAM_CONFLICT_PREFIX + key
        if key not in existing:
            out.append(Param(key, value))
    return out


def _tags(tags: dict[str, str]) -> list[RunTag]:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


def _summary_metrics(result: ExperimentResult) -> list[Metric]:
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)
    return [Metric(k, v, now_ms, 0) for k, v in result.mlflow_metrics().items()]


def _trace_metrics(trace: PowerTrace) -> list[Metric]:
    """``power/gpu{i}_w`` history: one point per sample, its own wall-clock ms, step = index."""
    from mlflow.entities import Metric

    return [
        Metric(f"power/gpu{gpu}_w", s.power_w, int(s.timestamp_s * 1000), step)
        for gpu in trace.gpus()
        for step, s in enumerate(trace.for_gpu(gpu))
    ]


def _end_run(target: _Target) -> None:
    _guarded(
        target.uri,
        f"mark run {target.run_id} FINISHED",
        lambda: _set_terminated(target, "FINISHED"),
    )


def _end_quietly(target: _Target, status: str) -> None:
    with contextlib.suppress(Exception):  # the original error is the one worth reporting
        _set_terminated(target, status)


def _set_terminated(target: _Target, status: str) -> str:
    target.client.set_terminated(target.run_id, status=status)
    return target.run_id
