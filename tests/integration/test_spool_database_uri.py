"""A result spooled for a database tracking URI syncs as the user that URI names, its password brought back.

A real PostgreSQL (tests/pg_server.py; skipped, with the reason, where it cannot be started) holds the
MLflow store itself (the URI is ``postgresql+psycopg2://alice:<password>@host:port/mlflow``, the password
percent-encoded). A run with a wrong password cannot log, so it is spooled: the spool keeps the URI with
the user name and without any password. ``sync`` then logs it as ``alice`` with the password from where
the docs say credentials live: ``MLFLOW_TRACKING_URI`` naming the same store, or libpq's ``PGPASSWORD``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from mlflow.tracking import MlflowClient
from pg_server import Postgres, PostgresUnavailable, create_database, start_postgres, stop_postgres
from typer.testing import CliRunner

from llem_mlflow.cli.app import app
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.run.execute import execute
from llem_mlflow.tracking import spool
from llem_mlflow.tracking.client import LLEM_EXPERIMENT_TAG
from tests.fakes import FakeBackend

pytestmark = pytest.mark.slow

USER = "alice"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throwaway PostgreSQL server (skipped, with the reason, where it cannot be started)."""
    pytest.importorskip("psycopg2", reason="psycopg2 (the dev extra's psycopg2-binary) is not installed")
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        pytest.skip(f"cannot start PostgreSQL: {exc}")
    try:
        yield server
    finally:
        stop_postgres(server)


@pytest.fixture(scope="module")
def store(postgres: Postgres) -> tuple[str, str, str]:
    """(URI with the password, the password, the URI the spool must keep) of alice's database."""
    password = f"p@ss/{secrets.token_hex(8)}"  # must be percent-encoded in a URI
    create_database(postgres, USER, password, "mlflow")
    where = f"{postgres.host}:{postgres.port}/mlflow"
    return (
        f"postgresql+psycopg2://{USER}:{quote(password, safe='')}@{where}",
        password,
        (f"postgresql+psycopg2://{USER}@{where}"),
    )


def _spool_with_a_wrong_password(tmp_path: Path, uri: str, password: str, experiment: str) -> spool.Entry:
    wrong = uri.replace(quote(password, safe=""), "not-the-password")
    cfg = ExperimentConfig.model_validate(
        dict(
            n=2,
            batch_size=2,
            max_input_tokens=4,
            max_output_tokens=2,
            baseline_s=0.0,
            output_dir=str(tmp_path / "out"),
            tracking_uri=wrong,
            experiment_name=experiment,
        )  # fmt: skip
    )
    outcome = execute(cfg, backend=FakeBackend())
    assert outcome.run_id is None and "spooled in" in (outcome.tracking_error or "")
    (entry,) = spool.pending()
    return entry


def _sync() -> tuple[int, str]:
    result = CliRunner().invoke(app, ["sync"])
    return result.exit_code, result.output


def _logged(uri: str, experiment: str, llem_id: str) -> list[str]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return [
        r.info.run_id
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags[LLEM_EXPERIMENT_TAG] == llem_id
    ]


def _no_password(text: str, password: str) -> bool:
    return password not in text and quote(password, safe="") not in text and "not-the-password" not in text


def test_sync_gets_the_password_back_from_mlflow_tracking_uri(
    tmp_path: Path, store: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, password, kept = store
    entry = _spool_with_a_wrong_password(tmp_path, uri, password, "db-env-uri")
    manifest = (entry.folder / spool.MANIFEST).read_text()
    assert json.loads(manifest)["target"]["tracking_uri"] == kept  # the user stays, the password goes
    assert _no_password(manifest, password)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    code, out = _sync()
    assert code == 0 and "logged run" in out and f"at {kept}" in out, out
    assert _no_password(out, password)
    assert len(_logged(uri, "db-env-uri", entry.llem_id)) == 1 and spool.pending() == []


def test_sync_logs_in_as_the_stored_user_with_pgpassword(
    tmp_path: Path, store: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, password, kept = store
    entry = _spool_with_a_wrong_password(tmp_path, uri, password, "db-pgpassword")
    monkeypatch.setenv("PGPASSWORD", password)  # docs/reliability/postgres.md; MLFLOW_TRACKING_URI: sqlite
    code, out = _sync()
    assert code == 0 and "logged run" in out and f"at {kept}" in out, out
    assert len(_logged(uri, "db-pgpassword", entry.llem_id)) == 1 and spool.pending() == []
