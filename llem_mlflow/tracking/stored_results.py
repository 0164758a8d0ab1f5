"""Reading llem results back out of MLflow (``llem-mlflow compare``, a sweep's summary): which runs hold
an llem result (tag ``llem.experiment_id``), and each one's ``result.json`` artifact, validated.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llem_mlflow.errors import ConfigError
from llem_mlflow.results.files import RESULT_FILE, read_result_json
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.tracking.connection import guarded
from llem_mlflow.tracking.runs import LLEM_EXPERIMENT_TAG, PARENT_RUN_TAG, run_or_none
from llem_mlflow.tracking.store import open_client
from llem_mlflow.tracking.uris import resolve_experiment_name, resolve_tracking_uri, scrub_uri

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class StoredResult:
    """One MLflow run holding an llem result, read back from its ``result.json`` artifact."""

    run_id: str
    run_name: str
    result: ExperimentResult


def read_results(
    tracking_uri: str | None,
    *,
    run_ids: Sequence[str] = (),
    experiment_name: str | None = None,
    parent: str | None = None,
) -> list[StoredResult]:
    """The llem results of ``run_ids``, else of ``parent``'s child runs, else of every FINISHED run of
    the experiment (``resolve_experiment_name(experiment_name)``) tagged ``llem.experiment_id``.

    Runs come in the order given, or by start time. Each run's ``result.json`` artifact is downloaded
    into a temporary folder and validated.

    Raises:
        ConfigError: a run id or the experiment is not in the store, or a named run holds no llem result.
        TrackingError: one line; the store is unreachable, or a search or download failed.
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = open_client(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per result.json otherwise
    if run_ids:
        runs = [_named_run(client, uri, run_id) for run_id in run_ids]
    elif parent:
        runs = _child_runs(client, uri, parent)
    else:
        runs = _experiment_runs(client, uri, resolve_experiment_name(experiment_name))
    return [_stored(client, uri, run) for run in runs]


def newest_run_id(tracking_uri: str | None, experiment_name: str | None, tag: tuple[str, str] | None) -> str:
    """The newest FINISHED llem run of the experiment, with tag ``key = value`` when ``tag`` is given.

    Raises:
        ConfigError: the experiment does not exist or no run matches (one line naming what was sought).
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = open_client(uri)
    name = resolve_experiment_name(experiment_name)
    runs = _experiment_runs(client, uri, name)
    if tag is not None:
        runs = [r for r in runs if r.data.tags.get(tag[0]) == tag[1]]
    if not runs:
        sought = f" tagged {tag[0]}={tag[1]}" if tag else ""
        raise ConfigError(f"no finished llem run{sought} in experiment {name!r} ({scrub_uri(uri)})")
    return str(runs[-1].info.run_id)  # oldest first


def _named_run(client: MlflowClient, uri: str, run_id: str) -> Run:
    run = guarded(uri, f"read run {run_id}", lambda: run_or_none(client, run_id))
    if run is None:
        raise ConfigError(f"run {run_id} is not in the MLflow store {scrub_uri(uri)}")
    if LLEM_EXPERIMENT_TAG not in run.data.tags:
        raise ConfigError(f"run {run_id} holds no llem result (no {LLEM_EXPERIMENT_TAG} tag)")
    return run


def _child_runs(client: MlflowClient, uri: str, parent: str) -> list[Run]:
    parent_run = _named_parent(client, uri, parent)
    where = f"tags.`{PARENT_RUN_TAG}` = '{parent}'"
    runs = guarded(
        uri,
        f"list the child runs of {parent}",
        lambda: _search_all(client, parent_run.info.experiment_id, where),
    )
    return [run for run in runs if LLEM_EXPERIMENT_TAG in run.data.tags]


def _named_parent(client: MlflowClient, uri: str, parent: str) -> Run:
    run = guarded(uri, f"read run {parent}", lambda: run_or_none(client, parent))
    if run is None:
        raise ConfigError(f"parent run {parent} is not in the MLflow store {scrub_uri(uri)}")
    return run


def _experiment_runs(client: MlflowClient, uri: str, name: str) -> list[Run]:
    experiment = guarded(uri, f"find experiment {name!r}", lambda: client.get_experiment_by_name(name))
    if experiment is None:
        raise ConfigError(f"no MLflow experiment named {name!r} in the store {scrub_uri(uri)}")
    where = "attributes.status = 'FINISHED'"
    runs = guarded(
        uri,
        f"list the runs of experiment {name!r}",
        lambda: _search_all(client, experiment.experiment_id, where),
    )
    return [run for run in runs if LLEM_EXPERIMENT_TAG in run.data.tags]


def _search_all(client: MlflowClient, experiment_id: str, where: str) -> list[Run]:
    """Every active run of the experiment matching ``where``, oldest first (all pages)."""
    from mlflow.entities import ViewType

    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=where,
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _stored(client: MlflowClient, uri: str, run: Run) -> StoredResult:
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="llem-compare-") as tmp:
        local = guarded(
            uri,
            f"download {RESULT_FILE} of run {run_id}",
            lambda: client.download_artifacts(run_id, RESULT_FILE, tmp),
        )
        result = read_result_json(Path(local))
    return StoredResult(run_id, run.info.run_name or run_id, result)
