"""Result folders never collide, also between processes starting at the same moment."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from llem_mlflow import artifacts

PROCESSES = 8


def _claim(output_dir: str, name: str, barrier: Any, results: Any) -> None:
    barrier.wait()  # every process claims the same name at once
    try:
        artifacts.result_dir(Path(output_dir), name)
        results.put("won")
    except artifacts.FolderTaken:
        folder, fresh = artifacts.claim_result_dir(
            Path(output_dir), lambda: f"{name}-{multiprocessing.current_process().pid}"
        )
        results.put(fresh)


def test_processes_claiming_one_name_at_once_get_one_folder_each(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_claim, args=(str(tmp_path), "same", barrier, results)) for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert got.count("won") == 1  # exactly one process holds "same"
    others = [g for g in got if g != "won"]
    assert len(set(others)) == PROCESSES - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["same", *others])


def test_a_rerun_of_the_same_config_in_the_same_second_gets_its_own_folder(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from llem_mlflow.runner import _experiment_id

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first, a = artifacts.claim_result_dir(tmp_path, lambda: _experiment_id(start, "abcdef0123456789"))
    (first / "result.json").write_text("first")
    second, b = artifacts.claim_result_dir(tmp_path, lambda: _experiment_id(start, "abcdef0123456789"))
    assert a != b and (first / "result.json").read_text() == "first"
