"""The spool (see ``spool_entries``: results whose MLflow logging failed wait there) and ``sync``, which
logs them once the store is back.

``sync`` logs every entry, or those given, exactly once, through ``recording.log_folder``'s protocol: an
entry is locked while it is synced (``locks.result_lock``, taken without waiting: a concurrent sync skips
the entry and goes on with the others), a run already holding the result is found (tag
``llem.experiment_id``) and nothing is added, half-logged runs are retired, and the entry is removed only
after the store holds the run. The original result folder is written to (``mlflow_run.json``) only when
it is an absolute, symlink-free path to a folder of that very result.

Credentials are never written to the spool; at sync time they come back as ``sync_uri`` says:
``--tracking-uri``, ``MLFLOW_TRACKING_URI`` naming the same store, or the environment
(``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``, ``PGPASSWORD``).

The names of ``spool_entries`` that callers reach as ``spool.X`` (``spool_dir``, ``spool_result``, ``keep``,
``target_now``, ``scan``, ``pending``, ``named``, ``Entry``, ``Target``...) are re-exported here.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from llem_mlflow.errors import LlemError
from llem_mlflow.secrets import same_store, scrub_secrets, usable_uri
from llem_mlflow.tracking import recording
from llem_mlflow.tracking.locks import ResultBusy, result_lock
from llem_mlflow.tracking.runs import ChildOf, LoggedRun
from llem_mlflow.tracking.spool_entries import (
    ENV_DIR,
    FILES,
    ID_PATTERN,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    REQUIRED,
    VERSION,
    Entry,
    Manifest,
    Skipped,
    Target,
    keep,
    named,
    pending,
    regular_bytes,
    scan,
    spool_dir,
    spool_result,
    target_now,
)

__all__ = [
    "ENV_DIR",
    "FILES",
    "ID_PATTERN",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "REQUIRED",
    "VERSION",
    "Entry",
    "Manifest",
    "Skipped",
    "Synced",
    "Target",
    "keep",
    "named",
    "pending",
    "scan",
    "spool_dir",
    "spool_result",
    "sync",
    "sync_uri",
    "target_now",
]


@dataclass(frozen=True)
class Synced:
    """What ``sync`` did with one entry: ``logged``, ``already logged``, ``would log`` (dry run),
    ``busy`` (another sync holds it), ``gone`` (another sync logged it meanwhile) or ``failed``
    (``note`` says why). Only ``failed`` is a failure."""

    entry: Entry
    status: str
    run_id: str | None = None
    tracking_uri: str | None = None
    note: str = ""


def sync(
    entries: Sequence[Entry],
    tracking_uri: str | None = None,
    dry_run: bool = False,
    experiment_name: str | None = None,
) -> list[Synced]:
    """Log each entry to its store (or ``tracking_uri``) and experiment (or ``experiment_name``); remove
    it once the store holds it."""
    return [_sync_one(e, tracking_uri, dry_run, experiment_name) for e in entries]


def sync_uri(stored: str, given: str | None) -> str:
    """The URI an entry whose store is ``stored`` (no secrets) is logged to, its credentials brought back.

    ``given`` (``sync --tracking-uri``) when there is one; else ``MLFLOW_TRACKING_URI`` when it names the
    same store (scheme, user, host, port, database: ``secrets.same_store``), so a database password
    written there comes back; else ``stored`` (parameters masked to ``***`` dropped), whose credentials
    come from the environment: ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN`` for http(s), the
    driver's own (``PGPASSWORD``, ``~/.pgpass``) for databases.
    """
    if given:
        return given
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and same_store(env, stored):
        return env
    return usable_uri(stored)


def _sync_one(entry: Entry, tracking_uri: str | None, dry_run: bool, experiment_name: str | None) -> Synced:
    uri = sync_uri(entry.target.tracking_uri, tracking_uri)
    if dry_run:
        return Synced(entry, "would log", tracking_uri=scrub_secrets(uri))
    gone = Synced(entry, "gone", note="another sync logged it meanwhile")
    try:
        with result_lock(entry.folder, wait=False):
            if not os.path.lexists(entry.folder / MANIFEST):
                return gone
            logged = _log(entry, uri, experiment_name)
            shutil.rmtree(entry.folder)
    except ResultBusy:
        return Synced(entry, "busy", note="another sync is logging it")
    except LlemError as exc:
        return Synced(entry, "failed", tracking_uri=scrub_secrets(uri), note=str(exc).splitlines()[0])
    except OSError as exc:
        if not os.path.lexists(entry.folder):
            return gone
        return Synced(entry, "failed", tracking_uri=scrub_secrets(uri), note=scrub_secrets(str(exc)))
    status = "already logged" if logged.already_logged else "logged"
    return Synced(entry, status, logged.run_id, logged.tracking_uri)


def _log(entry: Entry, uri: str, experiment_name: str | None) -> LoggedRun:
    """Log the entry under its lock and the original result folder's (when that is sound)."""
    t = entry.target
    child_of = ChildOf(t.parent_run_id, dict(t.child_tags)) if t.parent_run_id else None
    original = _original_folder(entry)
    with result_lock(original) if original else nullcontext(), _run_id_env(t.mlflow_run_id):
        logged = recording.log_folder(
            entry.folder,
            uri,
            experiment_name or t.experiment_name,
            t.run_name,
            child_of=child_of,
            locked=True,
        )
        if original is not None:  # the result folder names its run too
            recording.remember(original, logged)
    return logged


def _original_folder(entry: Entry) -> Path | None:
    """The folder the result was spooled from, when it is still there and really is that result's:
    an absolute path without symbolic links, named by the id, holding a result.json of that id."""
    path = Path(entry.result_dir)
    try:
        if os.path.realpath(path) != entry.result_dir or path.name != entry.llem_id or not path.is_dir():
            return None
        regular_bytes(path / "result.json")
        with (path / "result.json").open("rb") as f:
            held = json.loads(f.read(10_000_000)).get("experiment_id")
    except (OSError, ValueError, AttributeError):
        return None
    return path if held == entry.llem_id else None


@contextmanager
def _run_id_env(run_id: str | None) -> Iterator[None]:
    """``MLFLOW_RUN_ID`` = the ``mlflow run`` run while logging (tracking resumes it), then as before."""
    before = os.environ.pop("MLFLOW_RUN_ID", None)
    if run_id:
        os.environ["MLFLOW_RUN_ID"] = run_id
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_RUN_ID", None)
        if before is not None:
            os.environ["MLFLOW_RUN_ID"] = before
