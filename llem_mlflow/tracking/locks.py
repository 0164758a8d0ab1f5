"""The lock a result is logged under, so two processes (or threads) never log one result at once: an fcntl
lock held from the search for the run already holding it to the last byte logged.

``result_lock(folder)`` for a result folder or spool entry; ``memory_lock`` for a result held only in
memory (its folder's lock where that folder can hold one, else a lock file named by the llem experiment
id in the spool folder, else in a private folder of the temp folder).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from llem_mlflow.tracking.spool_entries import ID_PATTERN, spool_dir

log = logging.getLogger(__name__)

#: The lock file ``result_lock`` holds in a result folder or spool entry (removed when released).
LOCK_FILE = ".llem-mlflow.lock"


class ResultBusy(Exception):
    """Another process holds the result's lock (``result_lock(wait=False)``)."""


@contextlib.contextmanager
def result_lock(folder: Path, wait: bool = True) -> Iterator[None]:
    """Hold the result's lock: ``folder/.llem-mlflow.lock`` under ``fcntl.flock``, removed on release.

    A process that dies lets go of it (the kernel releases flock locks). A lock file found replaced
    or removed after it was locked (its holder released it meanwhile) is taken afresh. A folder where
    no lock file can be made (read-only) is locked through the folder itself; where even that fails,
    logging goes ahead unlocked with a warning (a measurement is worth more than the lock).

    Raises:
        ResultBusy: ``wait`` is False and another process holds the lock.
        FileNotFoundError: ``folder`` does not exist (any more).
    """
    fd = _lock_file(folder / LOCK_FILE, wait)
    if fd is None:
        log.warning("logging %s unlocked", folder)
    try:
        yield
    finally:
        _release(fd, folder / LOCK_FILE)


@contextlib.contextmanager
def memory_lock(llem_id: str, folder: Path) -> Iterator[None]:
    """Hold the lock of a result held only in memory: the first of ``folder``'s lock file (when the folder
    is still there and can hold one), ``.memory-<id>.lock`` in the spool folder and ``<id>.lock`` in a
    private folder of the temp folder that can be made and locked (each as ``result_lock`` locks). Where
    none can, logging goes ahead unlocked with a warning (a measurement is worth more than the lock).
    """
    fd, path = None, folder / LOCK_FILE
    for path in _memory_lock_paths(llem_id, folder):
        with contextlib.suppress(OSError):
            fd = _lock_file(path, wait=True)
        if fd is not None:
            break
    else:
        log.warning("no lock file could be made for %s anywhere: logging it unlocked", llem_id)
    try:
        yield
    finally:
        _release(fd, path)


def _memory_lock_paths(llem_id: str, folder: Path) -> Iterator[Path]:
    """Where ``memory_lock`` tries to lock, in order; a place whose folder cannot be made is left out."""
    safe = re.fullmatch(ID_PATTERN, llem_id)
    name = llem_id if safe else hashlib.sha256(llem_id.encode()).hexdigest()
    yield folder / LOCK_FILE
    places = [
        (spool_dir(), f".memory-{name}.lock"),  # a dot name: ``spool_entries.scan`` passes it by
        (Path(tempfile.gettempdir()) / f"llem-mlflow-locks-{os.getuid()}", f"{name}.lock"),
    ]
    for root, lock_name in places:
        try:
            _own_folder(root)
        except OSError as exc:
            log.debug("no lock in %s: %s", root, exc)
            continue
        yield root / lock_name


def _own_folder(root: Path) -> None:
    """Make ``root`` 0700 if missing; it must be this user's own real folder (OSError otherwise)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(root)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise OSError(f"{root} is not a folder of this user's own")


def _lock_file(path: Path, wait: bool) -> int | None:
    """An fd holding the lock file ``path`` (see ``result_lock``); None when it cannot be locked at all.

    Raises:
        OSError: no lock file can be made there (a folder that is gone, a full disk).
    """
    folder = path.parent
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise  # FileNotFoundError: the folder is gone
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # read-only: lock the folder itself
            return fd if _flocked(fd, wait, folder) else None
        if not _flocked(fd, wait, folder):
            return None
        if _same_file(fd, path):
            return fd
        os.close(fd)  # released and removed by its holder after we opened it: take a fresh one


def _release(fd: int | None, path: Path) -> None:
    """Let go of a lock ``_lock_file`` took, removing its lock file ``path`` (when it still is ours)."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        if _same_file(fd, path):
            os.unlink(path)
    os.close(fd)


def _flocked(fd: int, wait: bool, folder: Path) -> bool:
    """Lock ``fd``; False (``fd`` closed, a warning) when this filesystem cannot lock it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ResultBusy from None
    except OSError as exc:
        os.close(fd)
        log.warning("cannot lock %s (%s)", folder, exc)
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)
