"""Runs and experiments, the pieces every way of logging shares: the tags llem sets, a run created
exactly once (``create_run_once``), a run retired (``retire_run``), an experiment found or made by name.

Every run is created through ``create_run_once``: a run whose create reply was lost is found by its
``llem.create_token`` tag, and duplicates a retried create made are retired. The experiment a run goes
to gets ``mlflow.experimentKind = custom_model_development`` when it has no kind yet, so the MLflow 3.17
UI opens its runs table.
"""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from llem_mlflow.errors import TrackingError
from llem_mlflow.secrets import scrubbed_stdout

if TYPE_CHECKING:
    from mlflow.entities import Run, RunTag
    from mlflow.tracking import MlflowClient

LLEM_EXPERIMENT_TAG = "llem.experiment_id"
RETIRED_TAG = "llem.retired"  # why a run was retired (ended KILLED if RUNNING, soft-deleted): retire_run
CREATE_TOKEN_TAG = "llem.create_token"  # one per create_run call: finds the run a lost reply created
PARENT_RUN_TAG = "mlflow.parentRunId"  # what mlflow.start_run(nested=True) sets
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3.17 UI: "model training", the runs table
MLFLOW_DEFAULT_EXPERIMENT_ID = "0"
_GENERATED_NAME = re.compile(r"([a-z]+)-([a-z]+)-(\d{1,4})")


@dataclass(frozen=True)
class LoggedRun:
    """The MLflow run holding a result; ``already_logged``: found in the store, nothing was logged."""

    run_id: str
    experiment_id: str
    tracking_uri: str  # without credentials
    already_logged: bool = False

    def __str__(self) -> str:
        return self.run_id


@dataclass(frozen=True)
class ChildOf:
    """Log into a new run nested under ``parent_run_id`` (its experiment), tagged with ``tags``."""

    parent_run_id: str
    tags: Mapping[str, str] = field(default_factory=dict)


def create_run_once(
    client: MlflowClient, experiment_id: str, *, tags: Mapping[str, str], **kwargs: object
) -> Run:
    """``client.create_run`` that yields exactly one run, however its replies go.

    The run is tagged with a fresh ``llem.create_token``. MLflow's HTTP client retries a request whose
    reply was slower than ``MLFLOW_HTTP_REQUEST_TIMEOUT``, and every try creates a run: the runs holding
    the token other than the one returned are retired. A create that failed is looked up by its token
    before it counts as failed (the server may have made the run and lost only the reply).
    """
    token = uuid.uuid4().hex
    tagged = {**tags, CREATE_TOKEN_TAG: token}
    try:
        run = client.create_run(experiment_id, tags=tagged, **kwargs)  # type: ignore[arg-type]
    except Exception:
        made = _made_with(client, experiment_id, token)
        if not made:
            raise
        run = made[0]
    for extra in _made_with(client, experiment_id, token):
        if extra.info.run_id != run.info.run_id:
            why = f"a duplicate of run {run.info.run_id} made by a retried create request"
            retire_run(client, extra, why)
    return run


def _made_with(client: MlflowClient, experiment_id: str, token: str) -> list[Run]:
    """Runs of the experiment tagged with ``token``, oldest first."""
    from mlflow.entities import ViewType

    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{CREATE_TOKEN_TAG}` = '{token}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=50,
            order_by=["attributes.start_time ASC"],
        )
    )


def retire_run(client: MlflowClient, run: Run, why: str) -> None:
    """Retire ``run``: tag ``llem.retired`` = ``why``, end it KILLED if still RUNNING, soft-delete it.

    It stays restorable (``mlflow runs restore --run-id``) until ``mlflow gc`` removes it.
    """
    run_id = run.info.run_id
    client.set_tag(run_id, RETIRED_TAG, why[:5000])
    if run.info.status in ("RUNNING", "SCHEDULED"):
        with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" here
            client.set_terminated(run_id, status="KILLED")
    client.delete_run(run_id)


def run_or_none(client: MlflowClient, run_id: str) -> Run | None:
    """The run ``run_id``; None when the store does not hold it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None  # recorded against another store, or deleted for good
        raise


def active_run_id() -> str | None:
    """The id of MLflow's active fluent run; None when there is none (or mlflow is not imported)."""
    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None else None
    return None if run is None else str(run.info.run_id)


def experiment_named(client: MlflowClient, experiment_name: str) -> str:
    """The id of the active experiment ``experiment_name``, created (and kind-tagged) when missing."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        created = _create_experiment(client, experiment_name)
        if created is not None:
            return created
        experiment = client.get_experiment_by_name(experiment_name)  # another client created it just now
        if experiment is None:
            raise TrackingError(f"MLflow experiment {experiment_name!r} could be neither created nor found")
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {experiment_name!r} is deleted; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or pick another name"
        )
    ensure_kind(client, experiment.experiment_id, experiment.tags)
    return str(experiment.experiment_id)


def _create_experiment(client: MlflowClient, name: str) -> str | None:
    """Create experiment ``name``; None when it already exists (several clients starting at once race)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_ALREADY_EXISTS":
            return None
        raise


def ensure_kind(client: MlflowClient, experiment_id: str, tags: dict[str, str] | None = None) -> None:
    """Tag the experiment ``custom_model_development`` if it has no kind; never overwrite one."""
    if tags is None:
        tags = client.get_experiment(experiment_id).tags
    if EXPERIMENT_KIND_TAG not in tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def context_tags() -> dict[str, str]:
    """The tags MLflow's context providers give a new run (source, user, git commit, llem's GPUs)."""
    from mlflow.tracking.context.registry import resolve_tags

    return dict(resolve_tags())


def is_generated_name(name: str) -> bool:
    """Whether ``name`` looks like MLflow's random run name (``<predicate>-<noun>-<0..1000>``).

    ``mlflow run`` sets the ``--run-name`` tag right after starting the entry point, long before
    llem logs; without it the run keeps the name the store generated.
    """
    match = _GENERATED_NAME.fullmatch(name)
    if match is None:
        return False
    from mlflow.utils import name_utils

    predicates = getattr(name_utils, "_GENERATOR_PREDICATES", None)
    nouns = getattr(name_utils, "_GENERATOR_NOUNS", None)
    if predicates is None or nouns is None:
        return True  # word lists moved: the shape alone decides
    return match[1] in {p.lower() for p in predicates} and match[2] in {n.lower() for n in nouns}


def run_tags(tags: dict[str, str]) -> list[RunTag]:
    """``tags`` as MLflow ``RunTag`` entities, for ``log_batch``."""
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


def epoch_ms(moment: datetime) -> int:
    """``moment`` as integer epoch milliseconds (MLflow's run and metric times)."""
    return int(moment.timestamp() * 1000)
