"""The spool's entries: results whose MLflow logging failed, kept until ``llem-mlflow sync`` logs them.

When the tracking store is down at the start, dies during the run or answers with errors, the run's
files are already written (``runner``); ``spool_result`` then copies result.json, the Parquet trace
and power.png into ``<spool>/<llem experiment id>/`` with ``spool.json``: where the run was meant to go
(tracking URI without credentials, experiment, run name, the ``mlflow run`` run id, the sweep parent),
when and why it was spooled. Those files hold the whole MLflow payload (params, tags, metrics, trace
history with its original timestamps, artifacts): logging rebuilds it from them (``recording``).

The spool is per user: ``<LLEM_MLFLOW_SPOOL_DIR>/llem-mlflow-spool-<uid>`` (a folder of our own inside
the one named, which may be shared: it is never chmod-ed), else ``$XDG_STATE_HOME/llem-mlflow/spool``,
else ``~/.local/state/llem-mlflow/spool``. The spool folder is created 0700 and must be a real folder of
this user.

Nothing read from the spool is trusted: a manifest is validated by a strict frozen model (``Manifest``,
unknown keys refused), an entry must be a real folder directly in the spool named by its id, holding
regular files (no symbolic links), and the original result folder is written to (``mlflow_run.json``)
only when it is an absolute, symlink-free path to a folder of that very result. A bad entry is skipped
with one line saying why (``scan``), and ``sync`` (``spool``) goes on with the rest.

Credentials are never written here: the URI is stored as ``secrets.scrub_secrets`` leaves it (a database
URI keeps its user name); ``spool.sync_uri`` brings them back at sync time.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from llem_mlflow.errors import TrackingError
from llem_mlflow.secrets import scrub_secrets
from llem_mlflow.tracking.runs import ChildOf, active_run_id
from llem_mlflow.tracking.uris import target_tracking_uri

ENV_DIR = "LLEM_MLFLOW_SPOOL_DIR"
MANIFEST = "spool.json"
VERSION: Literal[1] = 1
#: The files of a result folder a spool entry keeps (power.png when there is one).
FILES = ("result.json", "timeseries.parquet", "power.png")
#: Files an entry must hold to be logged.
REQUIRED = ("result.json", "timeseries.parquet")
#: An entry's name: the llem experiment id (``identity``), safe as a folder name and in a filter string.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
_RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_MANIFEST_BYTES = 1_000_000


def spool_dir() -> Path:
    """This user's spool folder (see the module docstring); not created here."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser() / f"llem-mlflow-spool-{os.getuid()}"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "llem-mlflow" / "spool"


class Target(BaseModel):
    """Where a result was meant to be logged (no credentials)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    tracking_uri: str = Field(min_length=1, max_length=10_000)
    experiment_name: str | None = Field(None, max_length=10_000)
    run_name: str | None = Field(None, max_length=10_000)
    mlflow_run_id: str | None = Field(None, pattern=_RUN_ID_PATTERN)  # the run `mlflow run` made
    parent_run_id: str | None = Field(None, pattern=_RUN_ID_PATTERN)  # a sweep point: the parent run
    child_tags: dict[str, str] = Field(default_factory=dict, max_length=100)


class Manifest(BaseModel):
    """``spool.json``: as strict as a config (types exact, unknown keys refused)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    version: Literal[1]
    llem_id: str = Field(pattern=ID_PATTERN)
    target: Target
    result_dir: str = Field(min_length=1, max_length=4096)
    spooled_at: AwareDatetime
    reason: str = Field(max_length=100_000)


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
    def read(cls, folder: Path, root: Path | None = None) -> Entry:
        """The entry in ``folder``, checked (module docstring) against the spool ``root``.

        Raises:
            TrackingError: one line; ``folder`` is not a sound spool entry, and why.
        """
        root = root or spool_dir()
        try:
            manifest = _checked_manifest(folder, root)
        except (OSError, ValueError) as exc:
            raise TrackingError(f"{folder} is not a sound spool entry: {_why(exc)}") from None
        when = manifest.spooled_at.astimezone(timezone.utc).isoformat()
        return cls(folder, manifest.llem_id, manifest.target, manifest.result_dir, when, manifest.reason)


@dataclass(frozen=True)
class Skipped:
    """A spool folder ``sync`` leaves alone, and why (one line)."""

    folder: Path
    reason: str


def _checked_manifest(folder: Path, root: Path) -> Manifest:
    """The entry's manifest once the folder, its files and the manifest passed every check."""
    _check_inside(folder, root)
    manifest = Manifest.model_validate_json(regular_bytes(folder / MANIFEST, MAX_MANIFEST_BYTES))
    if manifest.llem_id != folder.name:
        raise ValueError(f"its manifest names {manifest.llem_id!r}, not the folder's name {folder.name!r}")
    if not _clean_absolute(manifest.result_dir):
        raise ValueError(f"result_dir {manifest.result_dir!r} is not a plain absolute path")
    for name in FILES:
        if name in REQUIRED or os.path.lexists(folder / name):
            regular_bytes(folder / name)
    return manifest


def _check_inside(folder: Path, root: Path) -> None:
    """``folder``: a real folder (no symbolic link) directly in the spool ``root``."""
    if os.path.islink(folder):
        raise ValueError("it is a symbolic link; an entry must be a folder of its own")
    if folder.resolve().parent != root.resolve() or not folder.is_dir():
        raise ValueError(f"it is not a folder in the spool {root}")


def regular_bytes(path: Path, limit: int | None = None) -> bytes:
    """The bytes of ``path`` (only ``limit`` are read; none without one); it must be a regular file, not a
    link (ValueError otherwise)."""
    mode = os.lstat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path.name} is {'a symbolic link' if stat.S_ISLNK(mode) else 'not a file'}")
    if limit is None:
        return b""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name} is larger than {limit} bytes")
    return data


def _clean_absolute(path: str) -> bool:
    return "\0" not in path and os.path.isabs(path) and os.path.normpath(path) == path


def _why(exc: Exception) -> str:
    """One line: the first problem pydantic found (field path and message), else the error's text."""
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "spool.json"
        return f"{MANIFEST} field {where}: {first['msg']}" + (
            f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        )
    if isinstance(exc, FileNotFoundError):
        return f"{Path(exc.filename or '?').name} is missing"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


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
        _own_folder(root)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o700)
        for name in FILES:
            if (folder / name).is_file():
                shutil.copy2(folder / name, tmp / name)
        manifest = _manifest(llem_id, target, folder, reason)
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
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
               child_of: ChildOf | None = None) -> Target:  # fmt: skip
    """Where a result logged now would go: the store, and the run ``mlflow run`` or the caller opened."""
    run_id = active_run_id() or os.environ.get("MLFLOW_RUN_ID")
    return Target(
        tracking_uri=target_tracking_uri(tracking_uri),
        experiment_name=experiment_name,
        run_name=run_name,
        mlflow_run_id=None if child_of is not None else run_id,
        parent_run_id=child_of.parent_run_id if child_of is not None else None,
        child_tags=dict(child_of.tags) if child_of is not None else {},
    )


def _manifest(llem_id: str, target: Target, folder: Path, reason: str) -> Manifest:
    return Manifest(
        version=VERSION,
        llem_id=llem_id,
        target=target.model_copy(update={"tracking_uri": scrub_secrets(target.tracking_uri)}),
        result_dir=str(folder.resolve()),
        spooled_at=datetime.now(timezone.utc),
        reason=scrub_secrets(reason),
    )


def _own_folder(root: Path) -> None:
    """Create the spool folder 0700 (parents as the umask says); an existing one must be this user's own
    real folder. No folder's mode is ever changed.

    Raises:
        OSError: the spool path is a symbolic link, not a folder, or another user's.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    with suppress(FileExistsError):
        root.mkdir(mode=0o700)
    _check_root(root)


def _check_root(root: Path) -> None:
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError(f"the spool {root} is not a folder (a symbolic link?); remove it or set {ENV_DIR}")
    if st.st_uid != os.getuid():
        raise OSError(f"the spool {root} belongs to another user; set {ENV_DIR} to a folder of yours")


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def scan(root: Path | None = None) -> tuple[list[Entry], list[Skipped]]:
    """Every sound entry in the spool, oldest first, and every folder or file left alone with why.

    Raises:
        TrackingError: the spool folder itself is not this user's own real folder.
    """
    root = root or spool_dir()
    if not os.path.lexists(root):
        return [], []
    try:
        _check_root(root)
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise TrackingError(str(exc)) from None
    entries, skipped = [], []
    for name in names:
        if name.startswith("."):
            continue  # a half-copied entry (.incoming-*), never ready
        try:
            entries.append(Entry.read(root / name, root))
        except TrackingError as exc:
            skipped.append(Skipped(root / name, str(exc)))
    return sorted(entries, key=lambda e: e.spooled_at), skipped


def pending(root: Path | None = None) -> list[Entry]:
    """Every sound entry in the spool, oldest first (see ``scan`` for those left alone)."""
    return scan(root)[0]


def named(names: Sequence[str], root: Path | None = None) -> list[Entry]:
    """The entries ``names`` (ids, or folders in the spool).

    Raises:
        TrackingError: a name is not a sound entry of this spool (the message says which and why).
    """
    root = root or spool_dir()
    out = []
    for name in names:
        folder = Path(name) if os.sep in name else root / name  # Entry.read: it must be in ``root``
        out.append(Entry.read(folder, root))
    return out
