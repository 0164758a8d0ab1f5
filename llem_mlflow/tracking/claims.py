"""Exactly once: which run in the store already holds a result, and the retirement of half-logged tries.

``claim_result`` finds the run already holding the result and retires half-logged ones (``runs.retire_run``):
``recording`` calls it under its lock per result, before logging, so a result is held by one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llem_mlflow.tracking.connection import guarded
from llem_mlflow.tracking.runs import LLEM_EXPERIMENT_TAG, LoggedRun, retire_run, run_or_none
from llem_mlflow.tracking.store import open_client
from llem_mlflow.tracking.uris import scrub_uri, target_tracking_uri

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient


@dataclass(frozen=True)
class Claim:
    """What ``claim_result`` found: the run holding the result (None: none yet), the runs it retired."""

    logged: LoggedRun | None
    retired: Sequence[str] = ()


def claim_result(
    llem_experiment_id: str,
    *,
    tracking_uri: str | None,
    run_id_hint: str | None = None,
    keep: Sequence[str] = (),
) -> Claim:
    """The run in the target store already holding the result, after retiring half-logged ones.

    A run holds the result when it is FINISHED (KILLED for an interrupted result), active and tagged
    ``llem.experiment_id = llem_experiment_id``; ``run_id_hint`` (the folder's ``mlflow_run.json``) is
    preferred among several. Every other active run with that tag, except those in ``keep`` (the ``mlflow
    run`` run, an active fluent run), is an earlier try that broke half-way: it is retired (``retire_run``).
    Call it under ``recording.result_lock``: a run another process is logging right now looks half-logged.

    Raises:
        TrackingError: one line; the store is unreachable, or the search or a retirement failed.
    """
    uri = target_tracking_uri(tracking_uri)
    client = open_client(uri)
    return guarded(
        uri,
        f"look for a run already holding {llem_experiment_id}",
        lambda: _claim(client, uri, llem_experiment_id, run_id_hint, set(keep)),
    )


def _claim(client: MlflowClient, uri: str, llem_id: str, hint: str | None, keep: set[str]) -> Claim:
    tagged = _search_tagged(client, llem_id)
    hinted = run_or_none(client, hint) if hint and hint not in {r.info.run_id for r in tagged} else None
    runs = ([hinted] if hinted is not None else []) + tagged
    holding = [r for r in runs if _holds(r, llem_id)]
    holding.sort(key=lambda r: r.info.run_id != hint)  # the recorded run first, then newest first
    partial = [r for r in tagged if not _holds(r, llem_id) and r.info.run_id not in keep]
    for run in partial:
        retire_run(client, run, "an earlier try at logging this result that did not finish")
    logged = _logged(holding[0], uri) if holding else None
    return Claim(logged, [r.info.run_id for r in partial])


def _holds(run: Run, llem_id: str) -> bool:
    """Whether ``run`` is a FINISHED, active run tagged with the llem experiment id."""
    info = run.info
    interrupted = info.status == "KILLED" and run.data.tags.get("llem.status") == "interrupted"
    return (
        (info.status == "FINISHED" or interrupted)
        and info.lifecycle_stage == "active"
        and run.data.tags.get(LLEM_EXPERIMENT_TAG) == llem_id
    )


def _logged(run: Run, uri: str) -> LoggedRun:
    return LoggedRun(run.info.run_id, run.info.experiment_id, scrub_uri(uri), already_logged=True)


def _search_tagged(client: MlflowClient, llem_id: str) -> list[Run]:
    from mlflow.entities import ViewType

    experiment_ids = _active_experiment_ids(client)
    if not experiment_ids:
        return []
    return list(
        client.search_runs(
            experiment_ids,
            filter_string=f"tags.`{LLEM_EXPERIMENT_TAG}` = '{llem_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=20,
            order_by=["attributes.start_time DESC"],
        )
    )


def _active_experiment_ids(client: MlflowClient) -> list[str]:
    from mlflow.entities import ViewType

    ids: list[str] = []
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids
