"""The spool trusts nothing it reads: hand-edited manifests, symlinks, concurrent syncs, a shared folder.

Entries are made by ``spool.spool_result`` from real result folders and then edited by hand; ``sync``
is the real CLI (typer's CliRunner, or two real processes) logging to a real sqlite store.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

import llem_mlflow
from llem_mlflow.cli.app import app
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.tracking import spool
from llem_mlflow.tracking.client import LLEM_EXPERIMENT_TAG


def _result_folder(out: Path, sample: tuple[ExperimentResult, PowerTrace], llem_id: str) -> Path:
    result, trace = sample
    result = result.model_copy(update={"experiment_id": llem_id})
    folder = out / llem_id
    folder.mkdir(parents=True)
    artifacts.write_result_json(result, folder)
    artifacts.write_trace_parquet(trace, folder, {k: (w.start_s, w.end_s) for k, w in result.windows.items()})
    return folder


def _spooled(tmp_path: Path, sample: tuple[ExperimentResult, PowerTrace], llem_id: str, uri: str) -> Path:
    folder = _result_folder(tmp_path / "out", sample, llem_id)
    return spool.spool_result(
        folder, llem_id, spool.Target(tracking_uri=uri, experiment_name="trust"), "down"
    )


def _edit(entry: Path, **changes: object) -> None:
    manifest = json.loads((entry / spool.MANIFEST).read_text())
    for key, value in changes.items():
        *path, last = key.split("__")
        node = manifest
        for part in path:
            node = node[part]
        node[last] = value
    (entry / spool.MANIFEST).write_text(json.dumps(manifest))


def _sync(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["sync", *args])
    return result.exit_code, result.output


def _runs(uri: str) -> list:  # type: ignore[type-arg]
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return list(client.search_runs(ids, run_view_type=ViewType.ACTIVE_ONLY))


def test_a_result_dir_outside_its_result_is_never_written_to(
    tmp_path: Path, sample_result: tuple[ExperimentResult, PowerTrace], isolated_mlflow: str
) -> None:
    victim = tmp_path / "victim"  # stands for /etc
    victim.mkdir()
    dotted = _spooled(tmp_path, sample_result, "dots-20260101T000000Z-aaaaaa", isolated_mlflow)
    _edit(dotted, result_dir=os.path.relpath(victim, Path.cwd()))  # "../../../etc"
    elsewhere = _spooled(tmp_path, sample_result, "else-20260101T000000Z-bbbbbb", isolated_mlflow)
    _edit(elsewhere, result_dir=str(victim))  # absolute, but not this result's folder

    code, out = _sync()

    assert not (victim / artifacts.RUN_RECORD_FILE).exists() and list(victim.iterdir()) == []
    assert code == 1 and "dots-20260101T000000Z-aaaaaa" in out and "result_dir" in out  # skipped, said why
    assert "else-20260101T000000Z-bbbbbb  logged run" in out  # logged; only its own folder gets the record
    assert [r.data.tags[LLEM_EXPERIMENT_TAG] for r in _runs(isolated_mlflow)] == [
        "else-20260101T000000Z-bbbbbb"
    ]


@pytest.mark.parametrize("dry_run", [False, True])
def test_malformed_entries_are_skipped_one_line_each_and_the_rest_synced(
    tmp_path: Path, sample_result: tuple[ExperimentResult, PowerTrace], isolated_mlflow: str, dry_run: bool
) -> None:
    good = _spooled(tmp_path, sample_result, "good-20260101T000000Z-aaaaaa", isolated_mlflow)
    bad = {
        "spooled_at": ("when-20260101T000000Z-bbbbbb", 5),  # a number where a string belongs
        "target__tracking_uri": ("uri-20260101T000000Z-cccccc", 5),
        "target__child_tags": ("tags-20260101T000000Z-dddddd", ["a"]),  # a list for a mapping
        "target": ("list-20260101T000000Z-eeeeee", []),
        "surprise": ("more-20260101T000000Z-ffffff", "an unknown key"),
    }
    for key, (llem_id, value) in bad.items():
        _edit(_spooled(tmp_path, sample_result, llem_id, isolated_mlflow), **{key: value})

    code, out = _sync(*(["--dry-run"] if dry_run else []))

    assert code == 1, out
    lines = out.strip().splitlines()
    for llem_id, _ in bad.values():
        (line,) = [x for x in lines if llem_id in x]
        assert "skipped" in line and "spool.json field" in line, line
    assert any(x.startswith(f"{good.name}  {'would log' if dry_run else 'logged'}") for x in lines), out
    assert len(_runs(isolated_mlflow)) == (0 if dry_run else 1)
    assert "Traceback" not in out


def test_symlinks_in_the_spool_are_refused(
    tmp_path: Path, sample_result: tuple[ExperimentResult, PowerTrace], isolated_mlflow: str
) -> None:
    real = _spooled(tmp_path, sample_result, "link-20260101T000000Z-aaaaaa", isolated_mlflow)
    moved = tmp_path / "elsewhere"
    real.rename(moved)
    real.symlink_to(moved, target_is_directory=True)  # a symlinked entry
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the tracking server")
    leaky = _spooled(tmp_path, sample_result, "leak-20260101T000000Z-bbbbbb", isolated_mlflow)
    (leaky / "power.png").symlink_to(secret)  # would upload any file as an artifact

    code, out = _sync()

    assert code == 1 and "Traceback" not in out
    assert "symbolic link" in out and "link-20260101T000000Z-aaaaaa" in out and "leak-20260101T000000Z" in out
    assert _runs(isolated_mlflow) == [] and moved.is_dir() and real.is_symlink()


def test_an_entry_synced_by_another_sync_meanwhile_is_skipped_quietly(
    tmp_path: Path, sample_result: tuple[ExperimentResult, PowerTrace], isolated_mlflow: str
) -> None:
    _spooled(tmp_path, sample_result, "race-20260101T000000Z-aaaaaa", isolated_mlflow)
    listed = spool.pending()  # this sync listed the entry ...
    (first,) = spool.sync(spool.pending())  # ... another sync logged it and removed it

    (second,) = spool.sync(listed)

    assert first.status == "logged" and second.status == "gone"
    assert len(_runs(isolated_mlflow)) == 1


@pytest.mark.slow
def test_two_sync_processes_share_the_work(
    tmp_path: Path, sample_result: tuple[ExperimentResult, PowerTrace], isolated_mlflow: str
) -> None:
    ids = [f"pair{i}-20260101T000000Z-aaaaaa" for i in range(6)]
    for llem_id in ids:
        _spooled(tmp_path, sample_result, llem_id, isolated_mlflow)
    root = str(Path(llem_mlflow.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    cmd = [sys.executable, "-m", "llem_mlflow", "sync"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    procs = [subprocess.Popen(cmd, env=env, cwd=root, text=True, **pipes) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]

    assert [p.returncode for p in procs] == [0, 0], outs
    assert all("Traceback" not in out + err for out, err in outs)
    assert sorted(r.data.tags[LLEM_EXPERIMENT_TAG] for r in _runs(isolated_mlflow)) == ids
    assert spool.pending() == []


def test_a_shared_spool_folder_keeps_its_mode_and_gets_a_private_subfolder(
    tmp_path: Path,
    sample_result: tuple[ExperimentResult, PowerTrace],
    isolated_mlflow: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setenv(spool.ENV_DIR, str(shared))

    entry = _spooled(tmp_path, sample_result, "mode-20260101T000000Z-aaaaaa", isolated_mlflow)

    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert entry.parent == shared / f"llem-mlflow-spool-{os.getuid()}"
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700


def test_a_folder_outside_the_spool_is_not_an_entry(
    tmp_path: Path, sample_result: tuple[ExperimentResult, PowerTrace], isolated_mlflow: str
) -> None:
    entry = _spooled(tmp_path, sample_result, "out-20260101T000000Z-aaaaaa", isolated_mlflow)
    outside = tmp_path / "mine" / entry.name
    outside.parent.mkdir()
    entry.rename(outside)  # looks like an entry, but is a folder of the user's

    code, out = _sync(str(outside))

    assert code == 2 and "not a folder in the spool" in out
    assert (outside / "result.json").is_file() and _runs(isolated_mlflow) == []  # neither logged nor deleted
