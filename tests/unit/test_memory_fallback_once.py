"""A result logged from memory (no file of it could be written) is logged exactly once, as a folder is:
under the result's lock, a run already holding it is kept and half-logged runs are retired."""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import TrackingError
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.run import publish as runner
from llem_mlflow.tracking import recording, spool
from llem_mlflow.tracking.client import LLEM_EXPERIMENT_TAG, RETIRED_TAG

ENOSPC = "[Errno 28] No space left on device"


def _runs(uri: str, llem_id: str, deleted: bool = False) -> list[Any]:
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    view = ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY
    return list(client.search_runs(ids, f"tags.`{LLEM_EXPERIMENT_TAG}` = '{llem_id}'", run_view_type=view))


def _in_memory(
    tmp_path: Path, sample: tuple[ExperimentResult, PowerTrace], llem_id: str
) -> tuple[Any, Any, Any, Any]:
    """(cfg, written, measurement, how) for ``runner._log_now``: a result no file of which was written."""
    result, trace = sample
    result = result.model_copy(update={"experiment_id": llem_id})
    cfg = ExperimentConfig.model_validate({"experiment_name": "memory", "output_dir": str(tmp_path / "out")})
    written = runner._Written(result, tmp_path / "out" / llem_id, f"cannot write: {ENOSPC}", on_disk=False)
    return cfg, written, SimpleNamespace(trace=trace), runner._Logging(reprobe=None, child_of=None)


def _log_from_memory(parts: tuple[Any, Any, Any, Any]) -> str:
    return runner._log_now(*parts)


def _no_lock_left(llem_id: str) -> bool:
    root = spool.spool_dir()
    return not (root / f".memory-{llem_id}.lock").exists()


# ---------------------------------------------------------------- the run: a full disk, a half-logged try


def _full_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    def write(target: Path, how: Any) -> Path:
        raise TrackingError(f"cannot write {target}: {ENOSPC}; check free space and permissions")

    monkeypatch.setattr(artifacts, "atomic_write", write)


def test_a_run_logged_from_memory_retires_a_half_logged_run_of_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_mlflow: str
) -> None:
    from llem_mlflow.run.execute import execute
    from tests.fakes import FakeBackend

    client = MlflowClient(isolated_mlflow)
    exp = client.create_experiment("disk")
    half: list[str] = []
    claim = artifacts.claim_result_dir

    def claim_and_half_log(output_dir: Path, make_id: Any, attempts: int = 5) -> tuple[Path, str]:
        folder, llem_id = claim(output_dir, make_id, attempts)  # an earlier try that died mid-logging:
        half.append(client.create_run(exp, tags={LLEM_EXPERIMENT_TAG: llem_id}).info.run_id)  # RUNNING
        return folder, llem_id

    monkeypatch.setattr(artifacts, "claim_result_dir", claim_and_half_log)
    _full_everywhere(monkeypatch)
    cfg = ExperimentConfig.model_validate(
        dict(n=4, batch_size=2, max_input_tokens=4, max_output_tokens=3, cycles=3, baseline_s=0.0,
             output_dir=str(tmp_path / "out"), experiment_name="disk")
    )  # fmt: skip

    outcome = execute(cfg, backend=FakeBackend(), store_probe=lambda c: None)

    assert "logged from memory" in outcome.write_error
    llem_id = outcome.result.experiment_id
    (run,) = _runs(isolated_mlflow, llem_id)
    assert run.info.run_id == outcome.run_id != half[0] and run.info.status == "FINISHED"
    (retired,) = _runs(isolated_mlflow, llem_id, deleted=True)
    assert retired.info.run_id == half[0] and retired.info.status == "KILLED"
    assert RETIRED_TAG in retired.data.tags
    assert _no_lock_left(llem_id)


# ---------------------------------------------------------------- the memory path itself, twice, at once


def test_logging_one_result_from_memory_twice_leaves_one_finished_run(
    tmp_path: Path, sample_result: tuple[ExperimentResult, PowerTrace], isolated_mlflow: str
) -> None:
    llem_id = "twice-20260101T000000Z-aaaaaa"
    parts = _in_memory(tmp_path, sample_result, llem_id)

    first = _log_from_memory(parts)
    second = _log_from_memory(parts)

    assert second == first
    (run,) = _runs(isolated_mlflow, llem_id)
    assert run.info.run_id == first and run.info.status == "FINISHED"
    client = MlflowClient(isolated_mlflow)
    assert client.get_experiment(run.info.experiment_id).name == "memory"
    assert artifacts.RESULT_FILE in {a.path for a in client.list_artifacts(first)}
    assert _runs(isolated_mlflow, llem_id, deleted=True) == []


def test_two_threads_logging_one_result_from_memory_make_one_run(
    tmp_path: Path,
    sample_result: tuple[ExperimentResult, PowerTrace],
    isolated_mlflow: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llem_mlflow.tracking import claims as tracking  # where recording looks claim_result up

    llem_id = "threads-20260101T000000Z-bbbbbb"
    parts = _in_memory(tmp_path, sample_result, llem_id)
    claim = tracking.claim_result
    claims: list[str] = []
    second_searching = threading.Event()

    def slow_claim(*args: Any, **kwargs: Any) -> Any:
        # the first search waits until the second thread searches too (unlocked: both find nothing and
        # both create a run) or 3 s have passed (locked: the second waits for the first to finish)
        claims.append(threading.current_thread().name)
        if len(claims) == 1:
            second_searching.wait(3)
        else:
            second_searching.set()
        return claim(*args, **kwargs)

    monkeypatch.setattr(tracking, "claim_result", slow_claim)
    got: dict[str, str] = {}
    errors: list[BaseException] = []

    def log(name: str) -> None:
        try:
            got[name] = _log_from_memory(parts)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=log, args=(f"t{i}",), name=f"t{i}") for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(claims) == 2 and len(set(got.values())) == 1
    (run,) = _runs(isolated_mlflow, llem_id)
    assert run.info.run_id in got.values() and run.info.status == "FINISHED"
    assert _runs(isolated_mlflow, llem_id, deleted=True) == []
    assert _no_lock_left(llem_id)


# ---------------------------------------------------------------- where the lock lives


def test_the_memory_lock_lives_in_the_temp_folder_when_neither_folder_nor_spool_can_hold_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    spool_parent = tmp_path / "not-a-folder"
    spool_parent.write_text("")  # the spool folder cannot be made under a file
    monkeypatch.setenv(spool.ENV_DIR, str(spool_parent))
    llem_id = "locked-20260101T000000Z-cccccc"
    lock = tmp_path / "tmp" / f"llem-mlflow-locks-{os.getuid()}" / f"{llem_id}.lock"

    with recording.memory_lock(llem_id, tmp_path / "gone"):
        fd = os.open(lock, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # held: another try at this result waits
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)

    assert not lock.exists()  # released and removed
    assert os.stat(lock.parent).st_mode & 0o777 == 0o700
