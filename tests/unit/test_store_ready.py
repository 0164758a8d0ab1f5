"""The MLflow store is never broken by us: real processes making the first use of a new sqlite store.

MLflow creates and migrates a sqlite store on first use, in place and not atomically. These tests start
real ``llem-mlflow log`` processes: four at once on a store that does not exist yet; one that gets SIGINT,
one SIGKILL, paused inside a migration step (a SQLAlchemy hook in the child); and a store left half made
by hand, which must be named so in one line with the way out.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy
from mlflow.store.db import utils as db_utils
from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import llem_mlflow
from llem_mlflow.cli.app import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RESULTS = ("h200_gpt2", "h200_gpt2_bs8", "h200_gpt2_bs16", "h200_tinyllama_steady")
ROOT = Path(llem_mlflow.__file__).resolve().parents[1]  # the checkout under test, for the children
WAIT_S = 300  # a bound against a hung child, never an assertion

CHILD = r"""
import os, sys, time
from pathlib import Path

folder, uri, marks = sys.argv[1], sys.argv[2], Path(sys.argv[3])
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401 - imported before the start line
import sqlalchemy
from llem_mlflow.cli import app as cli

steps = []

def pause(conn, cursor, statement, *args):
    # alembic bumps alembic_version after each migration step: stop after step PAUSE_AT_STEP
    if statement.lstrip().upper().startswith("UPDATE ALEMBIC_VERSION"):
        steps.append(statement)
        if len(steps) == int(os.environ["PAUSE_AT_STEP"]):
            (marks / "paused").touch()
            deadline = time.monotonic() + 120
            while not (marks / "signalled").exists() and time.monotonic() < deadline:
                time.sleep(0.02)

if os.environ.get("PAUSE_AT_STEP"):
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", pause)
(marks / f"ready-{os.getpid()}").touch()
while not (marks / "go").exists():
    time.sleep(0.01)
sys.argv = ["llem-mlflow", "log", folder, "--tracking-uri", uri]
cli.main()
"""


def _result(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / "results" / name
    shutil.copytree(FIXTURES / name, folder)
    return folder


def _spawn(folder: Path, uri: str, marks: Path, **env: str) -> subprocess.Popen[str]:
    child_env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", **env}
    child_env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(folder), uri, str(marks)],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, procs: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not path.exists():
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, f"a child ended early: {dead[0].communicate()}"
        assert time.monotonic() < deadline, f"no {path.name} within {WAIT_S} s"
        time.sleep(0.05)


def _start_together(procs: list[subprocess.Popen[str]], marks: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while len(list(marks.glob("ready-*"))) < len(procs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "children did not start"
        time.sleep(0.05)
    (marks / "go").touch()


def _whole(db: Path) -> list[str]:
    """What is wrong with the sqlite store ``db`` (empty: complete at this MLflow's head, and usable)."""
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall() if (
            "alembic_version" in tables) else []  # fmt: skip
    problems = [f"leftover table {t}" for t in tables if t.startswith("_alembic_tmp_")]
    head = db_utils._get_latest_schema_revision()
    if revision != [(head,)]:
        problems.append(f"revision {revision}, not {head}")
    if not problems:  # only a complete store is opened: MLflow would migrate a half one in place
        MlflowClient(f"sqlite:///{db}").search_experiments()
    return problems


def test_four_processes_making_the_first_use_of_a_new_store_all_log(tmp_path: Path) -> None:
    db, marks = tmp_path / "store" / "mlflow.db", tmp_path / "marks"
    db.parent.mkdir()
    marks.mkdir()
    uri = f"sqlite:///{db}"
    procs = [_spawn(_result(tmp_path, name), uri, marks) for name in RESULTS]
    _start_together(procs, marks)
    outs = [p.communicate(timeout=WAIT_S) for p in procs]
    # 77c7c5f: each migrates the new file in place at once: "table _alembic_tmp_tags already exists",
    # "duplicate column name: step", "Online migration expected to match one row": all fail for good
    assert [p.returncode for p in procs] == [0] * len(RESULTS), [err[-600:] for _, err in outs]
    assert _whole(db) == []
    runs = MlflowClient(uri).search_runs(
        [e.experiment_id for e in MlflowClient(uri).search_experiments()], max_results=100
    )
    assert len({r.data.tags["llem.experiment_id"] for r in runs}) == len(RESULTS)
    assert not list(db.parent.glob(".mlflow.db.llem-new-*"))


def _paused_in_migration(tmp_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    db, marks = tmp_path / "store" / "mlflow.db", tmp_path / "marks"
    db.parent.mkdir()
    marks.mkdir()
    proc = _spawn(_result(tmp_path, RESULTS[0]), f"sqlite:///{db}", marks, PAUSE_AT_STEP="5")
    _start_together([proc], marks)
    _wait_for(marks / "paused", [proc])
    return proc, db, marks


def test_sigint_inside_the_first_migration_leaves_a_complete_store(tmp_path: Path) -> None:
    proc, db, marks = _paused_in_migration(tmp_path)
    proc.send_signal(signal.SIGINT)
    (marks / "signalled").touch()
    _, err = proc.communicate(timeout=WAIT_S)
    # 77c7c5f: the KeyboardInterrupt lands inside the migration: mlflow.db stays at step 5 of ~90, for good
    assert db.exists(), err[-600:]
    assert _whole(db) == []
    assert "stopping once the MLflow store is made whole" in err
    assert not list(db.parent.glob(".mlflow.db.llem-new-*"))


def test_sigkill_inside_the_first_migration_leaves_no_store_and_the_next_use_creates_it(
    tmp_path: Path,
) -> None:
    proc, db, marks = _paused_in_migration(tmp_path)
    proc.kill()
    proc.communicate(timeout=WAIT_S)
    # 77c7c5f: mlflow.db exists, half migrated (the store is built in place)
    assert not db.exists()
    out = CliRunner().invoke(
        app, ["log", str(_result(tmp_path, RESULTS[1])), "--tracking-uri", f"sqlite:///{db}"]
    )
    assert out.exit_code == 0, out.output
    assert _whole(db) == []
    assert not list(db.parent.glob(".mlflow.db.llem-new-*"))  # the killed build was cleaned up


def _initial_tables(db: Path) -> None:
    """The tables MLflow creates before its first migration step, as a cut first use leaves them."""
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    InitialBase.metadata.create_all(engine)
    engine.dispose()


def _log_into(tmp_path: Path, db: Path) -> tuple[int, list[str]]:
    """``llem-mlflow log`` into ``db``: the exit code and the lines that name the store."""
    before = db.read_bytes()
    out = CliRunner().invoke(
        app, ["log", str(_result(tmp_path, RESULTS[0])), "--tracking-uri", f"sqlite:///{db}"]
    )
    assert db.read_bytes() == before  # a broken store is named, never touched
    assert "Traceback" not in out.output and "reachable" not in out.output, out.output
    return out.exit_code, [line for line in out.output.splitlines() if "tracking store" in line]


def test_a_store_cut_inside_a_migration_step_is_named_in_one_line_with_the_way_out(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    _initial_tables(db)
    with sqlite3.connect(db) as conn:  # step 1 (451aebb31d03) added its column, then the process died
        conn.execute("ALTER TABLE metrics ADD COLUMN step BIGINT DEFAULT '0' NOT NULL")
    code, lines = _log_into(tmp_path, db)
    # 77c7c5f: MLflow migrates it further in place (the store changes), then "could not open the store
    # ...: duplicate column name: step ... Check that the URI is right and the tracking server is reachable."
    assert code == 1
    assert len(lines) == 1 and "half-created" in lines[0], lines
    assert f"mv {db} {db}.broken" in lines[0]


def test_a_batch_migration_leftover_is_named_before_mlflow_is_asked(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    _initial_tables(db)
    with sqlite3.connect(db) as conn:  # alembic's batch copy of a table, dropped when a step completes
        conn.execute("CREATE TABLE _alembic_tmp_tags (key VARCHAR(250), value VARCHAR(5000))")
    code, lines = _log_into(tmp_path, db)
    # 77c7c5f: MLflow migrates it further in place, then "table _alembic_tmp_tags already exists ... Check
    # that the URI is right ..."
    assert code == 1
    assert len(lines) == 1 and "half-created" in lines[0] and f"mv {db} {db}.broken" in lines[0], lines


def _head_store(db: Path) -> None:
    """A complete store made by MLflow in another process (this one must not cache it open)."""
    code = (
        "import sys; from mlflow.tracking import MlflowClient; MlflowClient(sys.argv[1]).search_experiments()"
    )
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{db}"], check=True, timeout=WAIT_S)


def test_a_store_of_an_older_schema_says_mlflow_db_upgrade_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    _head_store(db)
    with sqlite3.connect(db) as conn:  # every table there, the revision of an older MLflow
        conn.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")
    code, lines = _log_into(tmp_path, db)
    # 77c7c5f: "could not open the store ...: Detected out-of-date database schema ... Check that the URI
    # is right and the tracking server is reachable."
    assert code == 1
    assert len(lines) == 1 and "older schema" in lines[0] and f"mlflow db upgrade sqlite:///{db}" in lines[0]


def test_a_store_of_a_newer_mlflow_says_so_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    _head_store(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    code, lines = _log_into(tmp_path, db)
    # 77c7c5f: "Can't locate revision identified by 'ffffffffffff' ... Check that the URI is right ..."
    assert code == 1
    assert len(lines) == 1 and "newer MLflow" in lines[0] and "ffffffffffff" in lines[0], lines


def test_a_creation_cut_between_two_steps_is_completed_on_a_copy(tmp_path: Path) -> None:
    from alembic import command

    db = tmp_path / "mlflow.db"
    _initial_tables(db)
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    config = db_utils._get_alembic_config(f"sqlite:///{db}")
    with engine.begin() as connection:  # the first step done whole, then the process died
        config.attributes["connection"] = connection
        command.upgrade(config, "451aebb31d03")
    engine.dispose()
    out = CliRunner().invoke(
        app, ["log", str(_result(tmp_path, RESULTS[0])), "--tracking-uri", f"sqlite:///{db}"]
    )
    assert out.exit_code == 0, out.output
    assert _whole(db) == []
    assert not list(tmp_path.glob(".mlflow.db.llem-new-*"))


def test_a_run_finds_its_new_store_made_before_measuring(tmp_path: Path) -> None:
    from llem_mlflow.config import ExperimentConfig
    from llem_mlflow.run.execute import execute
    from tests.fakes import FakeBackend

    db = tmp_path / "mlflow.db"
    seen: list[list[str]] = []
    cfg = ExperimentConfig.model_validate(
        dict(n=4, batch_size=2, max_input_tokens=4, max_output_tokens=3, cycles=1, baseline_s=0.0,
             output_dir=str(tmp_path / "out"), tracking_uri=f"sqlite:///{db}", sampling_interval_s=0.005)
    )  # fmt: skip

    def first_generate() -> None:
        if not seen:
            seen.append(_whole(db) if db.exists() else ["no store yet"])

    outcome = execute(cfg, backend=FakeBackend(on_generate=first_generate))
    # 77c7c5f: MLflow makes the store on first use, at logging, after measuring: "no store yet"
    assert seen == [[]]
    assert outcome.run_id is not None


def test_a_signal_in_the_main_thread_waits_for_a_worker_threads_deferred_block() -> None:
    import threading

    from llem_mlflow import interrupts

    inside, release, order = threading.Event(), threading.Event(), []

    def migrate() -> None:
        with interrupts.deferred():
            inside.set()
            release.wait(60)
            order.append("migrated")

    worker = threading.Thread(target=migrate)
    with interrupts.graceful():
        worker.start()
        inside.wait(60)
        try:
            os.kill(os.getpid(), signal.SIGINT)  # held: the worker is inside its block
            for _ in range(20):
                time.sleep(0.01)  # the handler runs between these
            order.append("main went on")
            release.set()
            worker.join(60)
            for _ in range(200):
                time.sleep(0.01)  # delivered again when the block ended
        except KeyboardInterrupt:
            order.append("interrupted")
    assert order == ["main went on", "migrated", "interrupted"]
