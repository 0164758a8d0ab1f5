"""Result folders never collide, also between processes starting at the same moment."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from llem_mlflow.results import files as artifacts

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

    from llem_mlflow.run.execute import _experiment_id

    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first, a = artifacts.claim_result_dir(tmp_path, lambda: _experiment_id(start, "abcdef0123456789"))
    (first / "result.json").write_text("first")
    second, b = artifacts.claim_result_dir(tmp_path, lambda: _experiment_id(start, "abcdef0123456789"))
    assert a != b and (first / "result.json").read_text() == "first"


# ---------------------------------------------------------------- a full disk loses nothing that can be kept

ENOSPC = "[Errno 28] No space left on device"


def _run_cfg(tmp_path: Path, **kw: object) -> Any:
    from llem_mlflow.config import ExperimentConfig

    base: dict[str, object] = dict(
        n=4, batch_size=2, max_input_tokens=4, max_output_tokens=3, cycles=3, baseline_s=0.0,
        output_dir=str(tmp_path / "out"), experiment_name="disk",
    )  # fmt: skip
    return ExperimentConfig.model_validate({**base, **kw})


def _execute(cfg: Any, backend: Any = None) -> Any:
    from llem_mlflow.run.execute import execute
    from tests.fakes import FakeBackend

    return execute(cfg, backend=backend or FakeBackend(), store_probe=lambda c: None)


def _full(monkeypatch: pytest.MonkeyPatch, inside: Path | None) -> None:
    """Every atomic write under ``inside`` (None: anywhere) fails as on a full disk."""
    from llem_mlflow.errors import TrackingError

    real = artifacts.atomic_write

    def write(target: Path, how: Any) -> Path:
        if inside is None or Path(target).resolve().is_relative_to(inside.resolve()):
            raise TrackingError(f"cannot write {target}: {ENOSPC}; check free space and permissions")
        return real(target, how)

    monkeypatch.setattr(artifacts, "atomic_write", write)


def _usage(free_b: int) -> Any:
    import shutil

    return lambda path: shutil._ntuple_diskusage(10**12, 10**12 - free_b, free_b)  # type: ignore[attr-defined]


def test_a_run_whose_files_cannot_fit_is_refused_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llem_mlflow.errors import ConfigError
    from tests.fakes import FakeBackend

    monkeypatch.setattr("shutil.disk_usage", _usage(500_000))  # an empty file still fits: free bytes decide
    backend = FakeBackend()
    with pytest.raises(ConfigError) as info:
        _execute(_run_cfg(tmp_path), backend)
    message = str(info.value)
    assert message.startswith("output_dir: only 0.5 MB free on the file system of")
    assert "a run needs about 1.0 MB (result.json and power.png up to 1.0 MB, a power trace of ~" in message
    assert "samples x 1 GPU(s) x 40 B for a run of at least" in message and "--output-dir" in message
    assert backend.load_calls == 0  # refused before any weight was loaded


def test_the_space_a_run_needs_grows_with_its_trace(tmp_path: Path) -> None:
    from llem_mlflow.run import preflight

    cfg = _run_cfg(tmp_path, n=1000, batch_size=1, max_output_tokens=500, sampling_interval_s=0.001)
    need = preflight.space_needed(cfg)  # (warm-up + 3 cycles x 1000 batches) x 500 steps x 5 ms, at 1 kHz
    assert need.run_s >= 3 * 1000 * 500 * preflight.MIN_STEP_S and need.samples == int(need.run_s / 0.001)
    assert need.bytes == preflight.RESULT_FILES_B + need.samples * preflight.TRACE_SAMPLE_B
    on_4 = preflight.space_needed(_run_cfg(tmp_path, device_map="auto"))
    assert on_4.gpus == 1  # CUDA_VISIBLE_DEVICES unset: one GPU assumed


def test_tight_free_space_is_a_warning_in_the_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.disk_usage", _usage(3_000_000))  # under 4 x the ~1 MB a small run needs
    outcome = _execute(_run_cfg(tmp_path, mlflow=False))
    assert any(
        w.startswith("output_dir: 3.0 MB free") and "a longer run may not fit" in w
        for w in outcome.result.warnings
    )


def test_a_full_result_folder_moves_the_files_elsewhere_and_logs_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    _full(monkeypatch, tmp_path / "out")
    outcome = _execute(_run_cfg(tmp_path))
    place = outcome.result_dir
    assert place.parent == tmp_path / "tmp" and (place / "result.json").is_file()
    assert artifacts.read_result_json(place / "result.json").cycles.n == 3
    assert outcome.run_id and outcome.tracking_error is None
    assert outcome.write_error.startswith(f"cannot write {tmp_path / 'out'}")
    assert f"the result files were written to {place} instead and logged to MLflow run {outcome.run_id}" in (
        outcome.write_error
    )
    names = {a.path for a in MlflowClient().list_artifacts(outcome.run_id)}
    assert {"result.json", "timeseries.parquet"} <= names
    assert list((tmp_path / "out").iterdir()) == []  # no empty result folder left behind


def test_with_no_room_anywhere_the_result_is_logged_from_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    _full(monkeypatch, None)
    outcome = _execute(_run_cfg(tmp_path))
    run = MlflowClient().get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["tokens/output"] == 3 * 4 * 3
    assert "result.json" in {a.path for a in MlflowClient().list_artifacts(outcome.run_id)}
    assert ENOSPC in outcome.write_error
    assert f"MLflow run {outcome.run_id} holds the result, logged from memory" in outcome.write_error


def test_with_no_room_and_no_mlflow_the_last_line_says_nothing_was_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _full(monkeypatch, None)
    outcome = _execute(_run_cfg(tmp_path, mlflow=False))
    assert outcome.result.output_tokens == 3 * 4 * 3  # measured, and returned for the summary
    assert outcome.write_error.endswith(
        "nothing could be kept on disk or in MLflow; the summary above is all that is left"
    )


# ---------------------------------------------------------------- real limits: file size limit, full tmpfs

SMALL_RUN = ["run", "--model", "llem/tiny-gpt2", "--weights", "random", "--n", "4", "--batch-size", "2",
             "--max-output-tokens", "4", "--cycles", "3", "--baseline-s", "0", "--output-dir", "out",
             "--experiment-name", "disk"]  # fmt: skip


def _limit_file_size(limit_b: int) -> Any:
    def limit() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_b, limit_b))

    return limit


@pytest.mark.slow
def test_under_a_file_size_limit_the_summary_prints_and_the_result_is_logged_from_memory(
    tmp_path: Path, mlflow_server: str
) -> None:
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path / "tmp"),
           "LLEM_MLFLOW_SPOOL_DIR": str(tmp_path / "spool")}  # fmt: skip
    # 4 KiB: the CPU run's empty trace (~2.5 KB) fits, result.json (~7 KB) fits nowhere
    proc = subprocess.run([sys.executable, "-m", "llem_mlflow", *SMALL_RUN, "--tracking-uri", mlflow_server],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
                          preexec_fn=_limit_file_size(4096))  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "workload        4 prompts" in proc.stdout and "mlflow run" in proc.stdout  # the summary
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and "File too large" in last
    run_id = last.split("MLflow run ", 1)[1].split()[0]
    assert "holds the result, logged from memory" in last
    run = MlflowClient(tracking_uri=mlflow_server).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["tokens/output"] == 3 * 4 * 4


def _tmpfs(folder: Path, size: str) -> bool:
    import subprocess

    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, check=False)  # fmt: skip
    return done.returncode == 0


@pytest.mark.slow
def test_a_disk_that_fills_during_the_run_moves_the_files_and_logs_them(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    disk = tmp_path / "disk"
    if not _tmpfs(disk, "4m"):
        pytest.skip("mounting a tmpfs needs root")
    try:
        (tmp_path / "tmp").mkdir()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path / "tmp"),
               "LLEM_MLFLOW_SPOOL_DIR": str(tmp_path / "spool"), "LLEM_TEST_FILL_DIR": str(disk)}  # fmt: skip
        hold = str(Path(__file__).resolve().parents[1] / "hold_stage.py")
        args = [arg if arg != "out" else str(disk / "out") for arg in SMALL_RUN]
        stage = "llem_mlflow.results.files:write_trace_parquet!fill"
        proc = subprocess.run([sys.executable, hold, stage, "--", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert "workload        4 prompts" in proc.stdout
        last = proc.stderr.strip().splitlines()[-1]
        assert "No space left on device" in last and f"were written to {tmp_path / 'tmp'}" in last
        run_id = last.rsplit("logged to MLflow run ", 1)[1].strip()
        names = {a.path for a in MlflowClient().list_artifacts(run_id)}
        assert {"result.json", "timeseries.parquet"} <= names
    finally:
        subprocess.run(["umount", str(disk)], check=False)
