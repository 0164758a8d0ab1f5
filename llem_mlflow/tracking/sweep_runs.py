"""A sweep's runs: one parent run per sweep (found again by ``llem.sweep.id`` when a sweep resumes), a
nested child run per point, and the finished points a resumed sweep skips.

A sweep resumed under a new ``mlflow run`` run moves the finished points of its earlier parents under
that run and retires them, tagged ``llem.sweep.superseded_by``; ``live_parent`` follows that tag, so a
point spooled for a retired parent is logged under the parent that replaced it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llem_mlflow.tracking.connection import guarded
from llem_mlflow.tracking.runs import (
    LLEM_EXPERIMENT_TAG,
    PARENT_RUN_TAG,
    context_tags,
    create_run_once,
    ensure_kind,
    experiment_named,
    is_generated_name,
    retire_run,
    run_tags,
)
from llem_mlflow.tracking.store import open_client
from llem_mlflow.tracking.uris import resolve_experiment_name, scrub_uri, target_tracking_uri

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

SWEEP_ID_TAG = "llem.sweep.id"  # hash of the sweep's base config and points: finds the parent again
SWEEP_FIELDS_TAG = "llem.sweep.fields"
SWEEP_POINT_TAG = "llem.sweep.point"  # a child's overrides, compact JSON
SWEEP_POINT_HASH_TAG = "llem.sweep.point_hash"  # hash of a child's full requested config
SWEEP_SUPERSEDED_TAG = "llem.sweep.superseded_by"  # a retired parent: the run its points moved to


@dataclass(frozen=True)
class DonePoint:
    """A FINISHED child run of a sweep parent: its id, summary metrics and ``llem.config_hash``; when it
    ended (epoch ms) and its ``llem.experiment_id`` (the name of its result folder)."""

    run_id: str
    metrics: Mapping[str, float]
    config_hash: str | None
    end_time_ms: int | None = None
    experiment_id: str | None = None


@dataclass(frozen=True)
class SweepParent:
    """A sweep's parent run; ``done``: its FINISHED children by ``llem.sweep.point_hash``."""

    run_id: str
    experiment_id: str
    tracking_uri: str  # without credentials
    done: Mapping[str, DonePoint]
    resumed: bool


def open_sweep_parent(
    sweep_id: str,
    run_name: str,
    tags: Mapping[str, str],
    *,
    tracking_uri: str | None,
    experiment_name: str | None,
) -> SweepParent:
    """The sweep's parent run, RUNNING: found again by ``llem.sweep.id = sweep_id``, else created.

    Inside ``mlflow run`` (``MLFLOW_RUN_ID``) that run is the parent, and a rerun resumes as the CLI
    does: the finished points of earlier parents of the same sweep move under it and those parents are
    retired (``_take_over_earlier``). With an active fluent run the
    parent is looked up in its experiment and a new one is nested under it; otherwise in
    ``resolve_experiment_name(experiment_name)``.

    Raises:
        TrackingError: one line; the store is unreachable or the parent cannot be made.
    """
    uri = target_tracking_uri(tracking_uri)
    client = open_client(uri)
    import mlflow

    active = mlflow.active_run()
    env_run_id = os.environ.pop("MLFLOW_RUN_ID", None)

    def parent() -> tuple[Run, bool]:
        if env_run_id:
            adopted = _adopt_parent(client, env_run_id, run_name, tags)
            return adopted, _take_over_earlier(client, adopted, sweep_id)
        exp_id = (
            active.info.experiment_id
            if active
            else experiment_named(client, resolve_experiment_name(experiment_name))
        )
        found = _find_parent(client, exp_id, sweep_id)
        if found is not None:
            client.update_run(found.info.run_id, status="RUNNING")
            return found, True
        nest = {PARENT_RUN_TAG: active.info.run_id} if active else {}
        made = create_run_once(client, exp_id, run_name=run_name, tags={**context_tags(), **tags, **nest})
        return made, False

    run, resumed = guarded(uri, "open the sweep's parent run", parent)
    done = guarded(uri, "list the sweep's finished points", lambda: _finished_children(client, run))
    return SweepParent(run.info.run_id, run.info.experiment_id, scrub_uri(uri), done, resumed)


def close_sweep_parent(
    parent: SweepParent,
    tags: Mapping[str, str],
    files: Sequence[Path],
    *,
    tracking_uri: str | None,
    failed: bool,
    child_tags: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    """Tag the children (``child_tags``: run id -> tags) and the parent, log ``files`` at its artifact root
    and end it FINISHED (FAILED: ``failed``)."""
    uri = target_tracking_uri(tracking_uri)
    client = open_client(uri)

    def close() -> None:
        for child, more in (child_tags or {}).items():
            client.log_batch(child, tags=run_tags(dict(more)))
        client.log_batch(parent.run_id, tags=run_tags(dict(tags)))
        for path in files:
            client.log_artifact(parent.run_id, str(path))
        client.set_terminated(parent.run_id, status="FAILED" if failed else "FINISHED")

    guarded(uri, f"close the sweep's parent run {parent.run_id}", close)


def live_parent(client: MlflowClient, run_id: str) -> Run:
    """The run ``run_id``, or the run it was superseded by (a sweep resumed under ``mlflow run``)."""
    run = client.get_run(run_id)
    for _ in range(100):  # a chain of resumed sweeps; never a loop
        successor = run.data.tags.get(SWEEP_SUPERSEDED_TAG)
        if not successor:
            break
        run = client.get_run(successor)
    return run


def _adopt_parent(client: MlflowClient, run_id: str, run_name: str, tags: Mapping[str, str]) -> Run:
    """The ``mlflow run`` run as the parent: RUNNING, tagged, named unless ``--run-name`` named it."""
    run = client.get_run(run_id)
    name = run_name if is_generated_name(run.info.run_name or "") else None
    client.update_run(run_id, status="RUNNING", name=name)
    client.log_batch(run_id, tags=run_tags(dict(tags)))
    ensure_kind(client, run.info.experiment_id)
    return client.get_run(run_id)


def _take_over_earlier(client: MlflowClient, parent: Run, sweep_id: str) -> bool:
    """Resume a sweep under a new ``mlflow run`` run: move the finished points of earlier parents
    (same ``llem.sweep.id``, same experiment) under ``parent`` and retire those parents.

    A retired parent is tagged ``llem.sweep.superseded_by`` = ``parent``'s id, so a point spooled for it
    is logged under ``parent`` (``live_parent``). Returns whether an earlier parent was found.
    """
    run_id = parent.info.run_id
    found = _find_parents(client, parent.info.experiment_id, sweep_id)
    earlier = [r for r in found if r.info.run_id != run_id]
    for old in earlier:
        for child in _finished_children(client, old).values():
            client.set_tag(child.run_id, PARENT_RUN_TAG, run_id)
        client.set_tag(old.info.run_id, SWEEP_SUPERSEDED_TAG, run_id)
        retire_run(client, old, f"superseded by run {run_id}: the sweep resumed there under `mlflow run`")
    return bool(earlier)


def _find_parents(client: MlflowClient, experiment_id: str, sweep_id: str) -> list[Run]:
    from mlflow.entities import ViewType

    return list(
        client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=100,
        )
    )


def _find_parent(client: MlflowClient, experiment_id: str, sweep_id: str) -> Run | None:
    from mlflow.entities import ViewType

    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{SWEEP_ID_TAG}` = '{sweep_id}'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return runs[0] if runs else None


def _finished_children(client: MlflowClient, parent: Run) -> dict[str, DonePoint]:
    from mlflow.entities import ViewType

    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent.info.run_id}' and attributes.status = 'FINISHED'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=10_000,
        order_by=["attributes.start_time ASC"],
    )
    done: dict[str, DonePoint] = {}
    for run in runs:
        key = run.data.tags.get(SWEEP_POINT_HASH_TAG)
        if key and LLEM_EXPERIMENT_TAG in run.data.tags:
            done[key] = DonePoint(
                run.info.run_id,
                dict(run.data.metrics),
                run.data.tags.get("llem.config_hash"),
                run.info.end_time,
                run.data.tags.get(LLEM_EXPERIMENT_TAG),
            )
    return done
