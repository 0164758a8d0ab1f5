"""The timings block: the stopwatch, stage laps from a whole run, its MLflow metrics, the CLI line, the
background MLflow import and the CLI's exit path. No assertion depends on how long anything took."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from llem_mlflow.cli import app as cli
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure import prefill
from llem_mlflow.measure.timings import Stopwatch, process_age_s
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.results.schema import ExperimentResult, Timings
from llem_mlflow.run.execute import GpuSet, Outcome, execute
from llem_mlflow.tracking import prefetch as tracking
from tests.conftest import build_result
from tests.fakes import FakeBackend, FakeDevice

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)
RUN_ORDER = [
    "checks",
    "load",
    "import_wait",
    "warmup",
    "idle_settle",
    "baseline",
    "measure",
    "prefill_isolated",
    "idle_after",
    "derive",
    "write",
    "log",
]


# ---------------------------------------------------------------- the stopwatch


class Ticks:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_laps_of_one_name_add_up_and_a_raising_block_still_counts() -> None:
    clock = Ticks()
    watch = Stopwatch(clock)
    with watch.lap("measure"):
        clock.now += 2.0
    clock.now += 5.0  # between laps: in elapsed_s only
    with watch.lap("measure"):
        clock.now += 1.5
    with pytest.raises(RuntimeError), watch.lap("load"):
        clock.now += 0.25
        raise RuntimeError("load failed")
    assert watch.laps == {"measure": 3.5, "load": 0.25}
    assert watch.get("measure") == 3.5 and watch.get("log") is None
    assert watch.elapsed_s() == 8.75


def test_process_age_from_proc(tmp_path: Path) -> None:
    (tmp_path / "self").mkdir()
    hz = __import__("os").sysconf("SC_CLK_TCK")
    fields = ["S", *["0"] * 18, str(50 * hz)]  # starttime (field 22): 50 s after boot
    (tmp_path / "self" / "stat").write_text(f"123 (llem mlflow) {' '.join(fields)} 0 0\n")
    (tmp_path / "uptime").write_text("62.50 100.00\n")
    assert process_age_s(tmp_path) == pytest.approx(12.5)
    assert process_age_s(tmp_path / "missing") is None
    if Path("/proc/self/stat").is_file():
        age = process_age_s()
        assert age is not None and age >= 0


# ---------------------------------------------------------------- stages of a whole run


def _cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    base = dict(
        n=6, batch_size=2, max_input_tokens=6, max_output_tokens=4, output_dir=str(tmp_path / "out"),
        mlflow=False, baseline_s=0.05, sampling_interval_s=0.005,
    )  # fmt: skip
    return ExperimentConfig.model_validate({**base, **kw})


def _gpu_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: object) -> Outcome:
    monkeypatch.setattr(prefill, "PREFILL_MIN_S", 0.02)
    device = FakeDevice(energy_script=lambda: time.time() * 100.0, power_w=lambda: 80.0 + time.time() % 1)
    backend = FakeBackend(device="cuda", cuda_devices=[CUDA0], on_generate=lambda: time.sleep(0.002))
    cfg = _cfg(tmp_path, isolated_prefill=True, idle_settle_max_s=0.2, cycles=2, cooldown_s=0.01, **kw)
    return execute(cfg, backend=backend, gpus=lambda ids: GpuSet([device], "580"), store_probe=lambda c: None)


def _assert_consistent(t: Timings) -> None:
    stages = t.stages()
    assert all(v >= 0 for v in stages.values())
    assert list(stages) == [name for name in RUN_ORDER if name in stages]  # run order
    assert sum(stages.values()) <= t.total_s


def test_a_gpu_run_times_every_stage_and_writes_what_ended_before_result_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = _gpu_run(tmp_path, monkeypatch)
    saved = ExperimentResult.model_validate_json((outcome.result_dir / "result.json").read_text())
    t = saved.timings
    assert t is not None and saved == outcome.result
    expected = set(RUN_ORDER) - {"import_wait", "log"}  # mlflow off: no import, no logging
    assert set(t.stages()) == expected
    assert t.log_s is None and t.startup_s is None
    _assert_consistent(t)
    assert t.measure_s is not None and t.measure_s >= sum(r.duration_s for r in saved.cycles.records)  # type: ignore[union-attr]
    assert t.idle_settle_s is not None and saved.idle_settle is not None
    assert t.idle_settle_s >= saved.idle_settle.waited_s

    full = outcome.timings  # the CLI's view: result.json's own write included
    assert full is not None and full.log_s is None
    _assert_consistent(full)
    assert full.total_s >= t.total_s and full.write_s is not None and t.write_s is not None
    assert full.write_s >= t.write_s
    assert {k: v for k, v in full.stages().items() if k != "write"} == {
        k: v for k, v in t.stages().items() if k != "write"
    }


def test_a_cpu_run_has_no_gpu_stages(tmp_path: Path) -> None:
    outcome = execute(_cfg(tmp_path), backend=FakeBackend(), store_probe=lambda c: None, startup_s=0.75)
    t = outcome.result.timings
    assert t is not None
    assert set(t.stages()) == {"checks", "load", "warmup", "measure", "derive", "write"}
    assert t.startup_s == 0.75 and t.baseline_s is None and t.idle_after_s is None
    _assert_consistent(t)


def test_logging_is_timed_outside_result_json_and_mlflow(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    outcome = execute(
        _cfg(tmp_path, mlflow=True, tracking_uri=uri), backend=FakeBackend(), store_probe=lambda c: None
    )
    assert outcome.run_id is not None and outcome.timings is not None
    assert outcome.timings.log_s is not None and "import_wait" in outcome.timings.stages()
    _assert_consistent(outcome.timings)
    saved = ExperimentResult.model_validate_json((outcome.result_dir / "result.json").read_text())
    assert saved.timings is not None and saved.timings.log_s is None
    metrics = MlflowClient(uri).get_run(outcome.run_id).data.metrics
    stage_metrics = {k for k in metrics if k.startswith("time/stage/")}
    assert stage_metrics == {f"time/stage/{name}_s" for name in saved.timings.stages()} | {
        "time/stage/total_s"
    }
    assert metrics["time/stage/total_s"] == round(saved.timings.total_s, 6)


# ---------------------------------------------------------------- the block and its metrics


TIMINGS = Timings(
    startup_s=1.2,
    checks_s=0.8123456789,
    load_s=12.1,
    import_wait_s=0.001,
    warmup_s=3.2,
    baseline_s=3.0,
    measure_s=6.8,
    idle_after_s=3.0,
    derive_s=0.2,
    write_s=0.1,
    log_s=1.7,
    total_s=30.2,
)


def test_metrics_name_each_stage_that_ran_and_round_to_the_microsecond() -> None:
    result = build_result().model_copy(update={"timings": TIMINGS})
    metrics = {k: v for k, v in result.mlflow_metrics().items() if k.startswith("time/stage/")}
    assert metrics == {
        "time/stage/startup_s": 1.2,
        "time/stage/checks_s": 0.812346,
        "time/stage/load_s": 12.1,
        "time/stage/import_wait_s": 0.001,
        "time/stage/warmup_s": 3.2,
        "time/stage/baseline_s": 3.0,
        "time/stage/measure_s": 6.8,
        "time/stage/idle_after_s": 3.0,
        "time/stage/derive_s": 0.2,
        "time/stage/write_s": 0.1,
        "time/stage/log_s": 1.7,
        "time/stage/total_s": 30.2,
    }
    assert not any(k.startswith("time/stage/") for k in build_result().mlflow_metrics())


def test_old_results_without_timings_still_load() -> None:
    data = build_result().model_dump(mode="json")
    data.pop("timings")
    assert ExperimentResult.model_validate(data).timings is None


# ---------------------------------------------------------------- the CLI line


def test_stages_line_lists_stages_from_0_05_s_in_run_order() -> None:
    assert cli.stages_line(TIMINGS) == (
        "startup 1.2 s, checks 0.8 s, load 12.1 s, warm-up 3.2 s, baseline 3.0 s, measure 6.8 s, "
        "idle after 3.0 s, derive 0.2 s, write 0.1 s, log 1.7 s (total 31.4 s from process start)"
    )
    api = Timings(checks_s=0.5, load_s=2.0, import_wait_s=1.25, measure_s=1.0, total_s=5.0)
    assert (
        cli.stages_line(api)
        == "checks 0.5 s, load 2.0 s, mlflow import wait 1.2 s, measure 1.0 s (total 5.0 s)"
    )


def test_summary_shows_the_stages_before_the_folder(tmp_path: Path) -> None:
    outcome = Outcome(result=build_result(), result_dir=tmp_path / "run1", run_id="abc123", timings=TIMINGS)
    lines = cli.summary(outcome).splitlines()
    assert lines[-3] == f"stages          {cli.stages_line(TIMINGS)}"
    assert lines[-1] == "mlflow run      abc123"
    no_timings = Outcome(result=build_result(), result_dir=tmp_path / "run1", run_id="abc123")
    assert not any(line.startswith("stages") for line in cli.summary(no_timings).splitlines())


# ---------------------------------------------------------------- background import and exit


@pytest.mark.parametrize(
    ("uri", "sql_store"), [("sqlite:///{tmp}/m.db", True), ("http://127.0.0.1:9", False)]
)
def test_prefetch_imports_mlflow_and_the_sql_store_only_for_sql_uris(
    tmp_path: Path, uri: str, sql_store: bool
) -> None:
    code = (
        "import sys\n"
        "from llem_mlflow.tracking import prefetch as tracking\n"
        f"assert tracking.prefetch({uri.format(tmp=tmp_path)!r}).wait(300)\n"
        "print('mlflow' in sys.modules, 'mlflow.store.tracking.sqlalchemy_store' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert proc.stdout.split() == ["True", str(sql_store)]


def test_a_failed_background_import_is_left_for_the_logging_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "llem_zz_after.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(tracking, "_yield_cpu", lambda: None)  # this is the test's own thread
    sys.modules.pop("llem_zz_after", None)
    with caplog.at_level("DEBUG", logger=tracking.__name__):
        tracking._import_all(["llem_no_such_module", "llem_zz_after"])  # does not raise ...
    # ... stops at the failure, and leaves it (logged at debug only) for the logging step to report
    assert "llem_zz_after" not in sys.modules
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
    assert "background import of llem_no_such_module failed" in caplog.records[0].getMessage()
    tracking._import_all(["llem_zz_after"])
    assert sys.modules.pop("llem_zz_after", None) is not None


def test_main_freezes_the_heap_before_exit_even_on_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen: list[bool] = []
    monkeypatch.setattr(cli.gc, "freeze", lambda: frozen.append(True))
    monkeypatch.setattr(cli._Process, "is_cli", False)

    def fail(*args: Any, **kwargs: Any) -> None:
        raise SystemExit(2)

    monkeypatch.setattr(cli, "app", fail)
    with pytest.raises(SystemExit):
        cli.main()
    assert frozen == [True] and cli._Process.is_cli
