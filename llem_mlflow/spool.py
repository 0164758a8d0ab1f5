"""The spool: results whose MLflow logging failed wait here until ``llem-mlflow sync`` logs them.

When the tracking store is down at the start, dies during the run or answers with errors, the run's
files are already written (``runner``); ``spool_result`` then copies result.json, the Parquet trace
and power.png into ``<spool>/<llem experiment id>/`` with ``spool.json``: where the run was meant to go
(tracking URI without credentials, experiment, run name, the ``mlflow run`` run id, the sweep parent),
when and why it was spooled. Those files hold the whole MLflow payload (params, tags, metrics, trace
history with its original timestamps, artifacts): logging rebuilds it from them (``recording``).

The spool is per user: ``LLEM_MLFLOW_SPOOL_DIR``, else ``$XDG_STATE_HOME/llem-mlflow/spool``, else
``~/.local/state/llem-mlflow/spool`` (folders 0700). ``sync`` logs every entry, or those given, exactly
once: an entry is locked while it is synced (a lock file; a lock whose process is gone is taken over),
logging finds a run that already holds the result (tag ``llem.experiment_id``) and then adds nothing,
and the entry is removed only after the store holds the run. Credentials are never written here: at
sync time they come from the environment (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``/``TOKEN``) or from
``--tracking-uri``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from llem_mlflow.errors import LlemError, TrackingError
from llem_mlflow.secrets import scrub_secrets

ENV_DIR = "LLEM_MLFLOW_SPOOL_DIR"
MANIFEST = "spool.json"
LOCK = ".lock"
VERSION = 1
#: The files of a result folder a spool entry keeps (power.png when there is one).
FILES = ("result.json", "timeseries.parquet", "power.png")


def spool_dir() -> Path:
    """This user's spool folder (see the module docstring); not created here."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "llem-mlflow" / "spool"


@dataclass(frozen=True)
class Target:
    """Where a result was meant to be logged (no credentials)."""

    tracking_uri: str
    experiment_name: str | None = None
    run_name: str | None = None
    mlflow_run_id: str | None = None  # the run `mlflow run` made for this entry point
    parent_run_id: str | None = None  # a sweep point: the sweep's parent run
    child_tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    """One spooled result: its folder, where it goes, when and why it was spooled."""

    folder: Path
    llem_id: str
    target: Target
    result_dir: str
    spooled_at: str
    reason: str

    @classmethod
    def read(cls, folder: Path) -> Entry:
        """The entry in ``folder``.

        Raises:
            TrackingError: ``spool.json`` is missing or not a spool manifest.
        """
        try:
            raw = json.loads((folder / MANIFEST).read_text())
            return cls(folder, raw["llem_id"], Target(**raw["target"]), raw["result_dir"],
                       raw["spooled_at"], raw["reason"])  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrackingError(
                f"{folder} is not a readable spool entry ({exc}); move it out of the spool"
            ) from None


def spool_result(folder: Path, llem_id: str, target: Target, reason: str, root: Path | None = None) -> Path:
    """Copy the result files of ``folder`` into a new spool entry; return the entry's folder.

    The entry is assembled in a temporary folder and renamed into place, so a half-copied entry never
    looks ready. Spooling the same result again replaces nothing: the existing entry is returned.

    Raises:
        TrackingError: the spool cannot be written (the result stays in ``folder``).
    """
    root = root or spool_dir()
    entry = root / llem_id
    if (entry / MANIFEST).is_file():
        return entry
    tmp = root / f".incoming-{llem_id}-{os.getpid()}"
    try:
        _make_private(root)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        for name in FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
        manifest = _manifest(llem_id, target, folder, reason)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _fsync_tree(tmp)
        os.replace(tmp, entry)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrackingError(f"could not spool {folder} into {root}: {exc}") from None
    return entry


def keep(folder: Path, llem_id: str, target: Target, error: str) -> str:
    """Spool a result whose logging failed with ``error``; return the message for the user.

    The message keeps ``error``'s first line and says where the result is and how to upload it. When
    the spool itself cannot be written, it says so and points at ``llem-mlflow log`` instead.
    """
    first = error.splitlines()[0] if error else "MLflow logging failed"
    try:
        entry = spool_result(folder, llem_id, target, first)
    except TrackingError as exc:
        return f"{first}\n{exc}. The result is saved in {folder}; log it later with: llem-mlflow log {folder}"
    return (
        f"{first}\nThe result is saved in {folder} and spooled in {entry}; "
        "upload everything spooled with: llem-mlflow sync"
    )


def target_now(tracking_uri: str | None, experiment_name: str | None, run_name: str | None,
               child_of: Any = None) -> Target:  # fmt: skip
    """Where a result logged now would go: the store, and the run ``mlflow run`` or the caller opened."""
    import sys

    from llem_mlflow import tracking

    mlflow = sys.modules.get("mlflow")
    active = mlflow.active_run() if mlflow is not None else None
    run_id = active.info.run_id if active is not None else os.environ.get("MLFLOW_RUN_ID")
    return Target(
        tracking_uri=tracking.target_tracking_uri(tracking_uri),
        experiment_name=experiment_name,
        run_name=run_name,
        mlflow_run_id=None if child_of is not None else run_id,
        parent_run_id=child_of.parent_run_id if child_of is not None else None,
        child_tags=dict(child_of.tags) if child_of is not None else {},
    )


def _manifest(llem_id: str, target: Target, folder: Path, reason: str) -> dict[str, Any]:
    clean = Target(**{**target.__dict__, "tracking_uri": scrub_secrets(target.tracking_uri)})
    return {
        "version": VERSION,
        "llem_id": llem_id,
        "target": clean.__dict__,
        "result_dir": str(folder.resolve()),
        "spooled_at": datetime.now(timezone.utc).isoformat(),
        "reason": scrub_secrets(reason),
    }


def _make_private(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pending(root: Path | None = None) -> list[Entry]:
    """Every ready entry in the spool, oldest first (unreadable ones are skipped: see ``broken``)."""
    entries = []
    for folder in _entry_folders(root or spool_dir()):
        try:
            entries.append(Entry.read(folder))
        except TrackingError:
            continue
    return sorted(entries, key=lambda e: e.spooled_at)


def broken(root: Path | None = None) -> list[Path]:
    """Entry folders whose manifest cannot be read (left alone by ``sync``)."""
    out = []
    for folder in _entry_folders(root or spool_dir()):
        try:
            Entry.read(folder)
        except TrackingError:
            out.append(folder)
    return out


def _entry_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]


# ---------------------------------------------------------------- sync


@dataclass(frozen=True)
class Synced:
    """What ``sync`` did with one entry: ``logged``, ``already logged``, ``would log`` (dry run),
    ``busy`` (another sync holds it) or ``failed`` (``note`` says why)."""

    entry: Entry
    status: str
    run_id: str | None = None
    tracking_uri: str | None = None
    note: str = ""


def sync(entries: Sequence[Entry], tracking_uri: str | None = None, dry_run: bool = False) -> list[Synced]:
    """Log each entry to its store (or ``tracking_uri``); remove it once the store holds it."""
    return [_sync_one(e, tracking_uri, dry_run) for e in entries]


def _sync_one(entry: Entry, tracking_uri: str | None, dry_run: bool) -> Synced:
    uri = tracking_uri or entry.target.tracking_uri
    if dry_run:
        return Synced(entry, "would log", tracking_uri=scrub_secrets(uri))
    try:
        with _locked(entry.folder):
            logged = _log(entry, uri)
            shutil.rmtree(entry.folder)
    except _Busy:
        return Synced(entry, "busy", note="another sync is logging it")
    except LlemError as exc:
        return Synced(entry, "failed", tracking_uri=scrub_secrets(uri), note=str(exc).splitlines()[0])
    status = "already logged" if logged.already_logged else "logged"
    return Synced(entry, status, logged.run_id, logged.tracking_uri)


def _log(entry: Entry, uri: str) -> Any:
    from llem_mlflow import recording, tracking

    t = entry.target
    child_of = tracking.ChildOf(t.parent_run_id, dict(t.child_tags)) if t.parent_run_id else None
    with _run_id_env(t.mlflow_run_id):
        logged = recording.log_folder(
            entry.folder, uri, t.experiment_name, t.run_name, child_of=child_of, replace_unfinished=True
        )
    original = Path(entry.result_dir)
    if original.is_dir():  # the result folder names its run too (best effort)
        recording.remember(original, logged)
    return logged


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


class _Busy(Exception):
    """Another live process holds the entry's lock."""


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` (O_EXCL, holding our pid); take over a lock whose process has gone."""
    lock = folder / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            break
        except FileExistsError:
            if _holder_alive(lock):
                raise _Busy from None
            lock.unlink(missing_ok=True)
    else:
        raise _Busy
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _holder_alive(lock: Path) -> bool:
    try:
        pid = int(lock.read_text() or "0")
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
