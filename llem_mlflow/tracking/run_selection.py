"""Which run receives a result (one result per run: two measurements are never merged):

0. a parent is named (``ChildOf``, a sweep's point): a new run nested under it, ended FINISHED;
1. a fluent run is active (``mlflow.active_run()``) and holds no result yet (no ``llem.experiment_id``
   tag): log into it and leave it open; if it already holds one: a new run nested under it
   (tag ``mlflow.parentRunId``, as ``mlflow.start_run(nested=True)``), ended FINISHED;
2. ``MLFLOW_RUN_ID`` is set (inside ``mlflow run``): resume that run, end it FINISHED;
3. otherwise: a new run in ``resolve_experiment_name(experiment_name)``, ended FINISHED.

Every run is created through ``runs.create_run_once``. Runs we own carry the measurement's own start
time (``create_run(start_time=result.start_time)``). A resumed run keeps the start time ``mlflow run``
gave it (MLflow has no API to change it), and ``mlflow run`` 3.17.2 re-terminates it once the entry
point exits (``_maybe_set_run_terminated`` tests a string status against int statuses), so its end time
is when the entry point exited.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llem_mlflow.config import DEFAULT_EXPERIMENT, MAX_RUN_NAME
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.tracking.connection import guarded
from llem_mlflow.tracking.runs import (
    LLEM_EXPERIMENT_TAG,
    MLFLOW_DEFAULT_EXPERIMENT_ID,
    PARENT_RUN_TAG,
    ChildOf,
    context_tags,
    create_run_once,
    ensure_kind,
    epoch_ms,
    experiment_named,
    is_generated_name,
)
from llem_mlflow.tracking.store import open_client
from llem_mlflow.tracking.sweep_runs import live_parent
from llem_mlflow.tracking.uris import resolve_experiment_name, target_tracking_uri

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunTarget:
    """The run to log into, and whether the logging step owns (and so ends) it."""

    client: MlflowClient
    uri: str
    run_id: str
    experiment_id: str
    owned: bool


def default_run_name(result: ExperimentResult) -> str:
    """``<model tail>-bs<batch size>-<precision>``, e.g. ``gpt2-bs8-bf16`` for ``openai/gpt2``; a server run's
    ``<model tail>-<engine>-c<concurrency>`` (closed loop) or ``-r<request rate>`` (open loop).

    A long model folder name is cut so the whole fits ``MAX_RUN_NAME`` (what MLflow's SQL stores hold).
    """
    model_tail = result.model.rstrip("/").rsplit("/", 1)[-1] or result.model
    batch_size = result.resolved.batch_size if result.resolved is not None else result.config.batch_size
    suffix = f"-bs{batch_size}-{result.precision}"
    s = result.serving
    if s is not None:  # a server run: the engine and the load, e.g. gpt2-vllm-c32 or gpt2-vllm-r4
        suffix = f"-{s.engine}-" + (f"c{s.concurrency}" if s.load == "closed" else f"r{s.request_rate:g}")
    return model_tail[: MAX_RUN_NAME - len(suffix)] + suffix


def select_run(
    result: ExperimentResult,
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
    child_of: ChildOf | None = None,
) -> RunTarget:
    """The run ``result`` goes to (module docstring), created or resumed as needed.

    Raises:
        TrackingError: one line; the store is unreachable, or the run cannot be created or resumed.
    """
    uri = target_tracking_uri(tracking_uri)
    client = open_client(uri)  # probes before mlflow is imported: a dead store fails at once
    import mlflow

    if child_of is not None:
        return _child_target(client, uri, child_of, result, run_name)
    active = mlflow.active_run()
    if active is not None:
        return _active_target(client, uri, active.info.run_id, result, run_name)
    env_run_id = os.environ.pop("MLFLOW_RUN_ID", None)  # like mlflow.start_run(): consume it once
    if env_run_id:
        what = f"resume run {env_run_id} from MLFLOW_RUN_ID"
        exp_id = guarded(uri, what, lambda: _resume(client, env_run_id, result, run_name))
        return RunTarget(client, uri, env_run_id, exp_id, owned=True)
    name = resolve_experiment_name(experiment_name)
    new_run = guarded(
        uri, f"create a run in experiment {name!r}", lambda: _new_run(client, name, result, run_name)
    )
    return RunTarget(client, uri, new_run.info.run_id, new_run.info.experiment_id, owned=True)


def _active_target(
    client: MlflowClient, uri: str, run_id: str, result: ExperimentResult, run_name: str | None
) -> RunTarget:
    """The active run while it holds no result; once it holds one, a new run nested under it."""
    run = guarded(uri, f"read the active run {run_id}", lambda: client.get_run(run_id))
    if LLEM_EXPERIMENT_TAG in run.data.tags:
        return _child_target(client, uri, ChildOf(run_id), result, run_name)
    exp_id = run.info.experiment_id
    guarded(uri, "tag the active run's experiment", lambda: ensure_kind(client, exp_id))
    return RunTarget(client, uri, run_id, exp_id, owned=False)


def _child_target(
    client: MlflowClient, uri: str, child_of: ChildOf, result: ExperimentResult, run_name: str | None
) -> RunTarget:
    """A new run in the parent's experiment, tagged ``mlflow.parentRunId`` (owned: ended here)."""
    what = f"create a run nested under run {child_of.parent_run_id}"
    child = guarded(uri, what, lambda: _new_child(client, child_of, result, run_name))
    return RunTarget(client, uri, child.info.run_id, child.info.experiment_id, owned=True)


def _new_child(
    client: MlflowClient, child_of: ChildOf, result: ExperimentResult, run_name: str | None
) -> Run:
    parent = live_parent(client, child_of.parent_run_id)
    experiment_id = parent.info.experiment_id
    ensure_kind(client, experiment_id)
    tags = {
        **context_tags(),
        **child_of.tags,
        PARENT_RUN_TAG: parent.info.run_id,
        LLEM_EXPERIMENT_TAG: result.experiment_id,  # a half-logged run can be found (and retired) again
    }
    return create_run_once(
        client,
        experiment_id,
        start_time=epoch_ms(result.start_time),
        run_name=run_name or default_run_name(result),
        tags=tags,
    )


def _resume(client: MlflowClient, run_id: str, result: ExperimentResult, run_name: str | None) -> str:
    run = client.get_run(run_id)  # fails clearly if the run does not exist in this store
    generated = is_generated_name(run.info.run_name or "")
    name = (run_name or default_run_name(result)) if generated else None  # None: keep the name
    client.update_run(run_id, status="RUNNING", name=name)
    experiment_id = str(run.info.experiment_id)
    if experiment_id == MLFLOW_DEFAULT_EXPERIMENT_ID:
        log.warning(
            "this `mlflow run` run is in MLflow's Default experiment; keep llem runs together with: "
            "mlflow run . --experiment-name %s",
            DEFAULT_EXPERIMENT,
        )
    ensure_kind(client, experiment_id)
    return experiment_id


def _new_run(
    client: MlflowClient, experiment_name: str, result: ExperimentResult, run_name: str | None
) -> Run:
    return create_run_once(
        client,
        experiment_named(client, experiment_name),
        start_time=epoch_ms(result.start_time),
        run_name=run_name or default_run_name(result),
        tags={**context_tags(), LLEM_EXPERIMENT_TAG: result.experiment_id},
    )
