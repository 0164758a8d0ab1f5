"""Decisions from logged runs, through the real CLI and a real sqlite MLflow store: the regression gate
(``compare --baseline --fail-if-worse``: exit 0, 1, 3), the best run under a latency target
(``compare --parent ID --max-itl-ms``), the front of a sweep (``llem.pareto`` tags, ``pareto.png``),
and the quality figure of a run (``quality: perplexity``)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from test_compare import invoke

from llem_mlflow.results import files
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.tracking import recording

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BASE = "h200x2_tinyllama_split"  # an H200 run with 3+ cycles


def base() -> ExperimentResult:
    return files.read_result_json(FIXTURES / BASE / files.RESULT_FILE)


def with_cycles(result: ExperimentResult, per_token: list[float]) -> ExperimentResult:
    """``result`` whose cycles are copies of its first with these J/output token values."""
    assert result.cycles is not None
    first = result.cycles.records[0]
    records = [
        first.model_copy(update={"index": i, "energy_per_output_token_j": v}) for i, v in enumerate(per_token)
    ]
    return result.model_copy(update={"cycles": result.cycles.model_copy(update={"records": records})})


def log(
    result: ExperimentResult,
    tmp_path: Path,
    experiment: str,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
) -> str:
    """Write ``result`` (a new experiment id) beside the fixture's trace, log it; the run id."""
    folder = tmp_path / uuid.uuid4().hex[:8]
    shutil.copytree(FIXTURES / BASE, folder)
    (folder / files.RUN_RECORD_FILE).unlink(missing_ok=True)
    fresh = result.model_copy(update={"experiment_id": f"gate-{uuid.uuid4().hex[:12]}"})
    files.write_result_json(fresh, folder)
    run_id = recording.log_folder(folder, None, experiment, run_name).run_id
    for key, value in (tags or {}).items():
        MlflowClient().set_tag(run_id, key, value)
    return run_id


def test_the_gate_passes_fails_and_refuses_with_its_exit_codes(tmp_path: Path) -> None:
    same = [0.100, 0.101, 0.099]
    baseline = log(with_cycles(base(), same), tmp_path, "gate", {"llem.git.commit": "abc123"}, "sha-abc123")
    again = log(with_cycles(base(), [0.1005, 0.0995, 0.1]), tmp_path, "gate")
    worse = log(with_cycles(base(), [0.120, 0.121, 0.119]), tmp_path, "gate")
    other = log(
        with_cycles(base(), same).model_copy(update={"measurement_methodology": "steady_state"}),
        tmp_path,
        "gate",
    )
    summary = tmp_path / "summary.md"

    code, stdout, stderr = invoke(again, "--baseline", baseline, "--fail-if-worse", "5")
    assert code == 0, stderr
    code, stdout, stderr = invoke(
        worse, "--baseline", "mlflow.runName=sha-abc123", "--fail-if-worse", "5", "--experiment-name", "gate"
    )
    assert code == 1, stderr  # the GPU CI's way: the baseline run is named after its commit
    code, stdout, _ = invoke(
        worse,
        "--baseline",
        "llem.git.commit=abc123",
        "--fail-if-worse",
        "5",
        "--markdown",
        str(summary),
        "--experiment-name",
        "gate",
    )
    assert code == 1 and "worse" in stdout.lower() and "+20" in stdout
    assert "|" in summary.read_text() and "5" in summary.read_text()
    code, stdout, _ = invoke(other, "--baseline", baseline, "--fail-if-worse", "5")
    assert code == 3 and "methodology" in stdout
    code, _, stderr = invoke(
        worse, "--baseline", "llem.git.commit=nope", "--fail-if-worse", "5", "--experiment-name", "gate"
    )
    assert code == 2 and "no finished llem run tagged llem.git.commit=nope" in stderr
    code, _, stderr = invoke(worse, "--baseline", baseline)
    assert code == 2 and "both --baseline and --fail-if-worse" in stderr


def _latency(result: ExperimentResult, j_per_token: float, itl_s: float) -> ExperimentResult:
    assert result.latency is not None
    latency = result.latency.model_copy(update={"itl_p50_s": itl_s})
    return result.model_copy(update={"avg_energy_per_token_j": j_per_token, "latency": latency})


@pytest.mark.parametrize(
    ("limit_ms", "answer"),
    [("50", "b "), ("30", "a "), ("10", "no run meets it"), ("1000", "c ")],
)
def test_best_under_an_itl_target_names_the_lowest_energy_run_meeting_it(
    tmp_path: Path, limit_ms: str, answer: str
) -> None:
    # by hand: a 0.30 J/token at 20 ms, b 0.20 at 45 ms, c 0.10 at 80 ms, d 0.25 at 60 ms (dominated by b):
    # <= 50 ms admits a, b -> b; <= 30 admits a; <= 10 none; <= 1000 all -> c
    fixture = files.read_result_json(FIXTURES / "h200x2_tinyllama_split" / files.RESULT_FILE)
    client = MlflowClient()
    parent = client.create_run(client.get_experiment_by_name("Default").experiment_id).info.run_id  # type: ignore[union-attr]
    for name, j, itl in (("a", 0.30, 0.020), ("b", 0.20, 0.045), ("c", 0.10, 0.080), ("d", 0.25, 0.060)):
        folder = shutil.copytree(FIXTURES / "h200x2_tinyllama_split", tmp_path / name)
        (folder / files.RUN_RECORD_FILE).unlink(missing_ok=True)
        files.write_result_json(
            _latency(fixture, j, itl).model_copy(update={"experiment_id": f"pt-{name}"}), folder
        )
        run_id = recording.log_folder(folder, None, "Default", name).run_id
        client.set_tag(run_id, "mlflow.parentRunId", parent)
    code, stdout, stderr = invoke("--parent", parent, "--max-itl-ms", limit_ms)
    assert code == 0, stderr
    line = next(x for x in stdout.splitlines() if x.startswith("best under ITL p50"))
    assert answer in line, line


def test_a_sweep_parent_gets_the_front_tags_and_pareto_png(tmp_path: Path) -> None:
    from llem_mlflow.sweep.front import PARETO_TAG, sweep_front
    from llem_mlflow.sweep.plan import Point
    from llem_mlflow.sweep.summary import Row

    def row(label: str, j: float, itl: float) -> Row:
        metrics = {"energy/per_output_token_j": j, "latency/itl_p50_s": itl}
        return Row(
            Point(overrides={"p": label}, config=None), "measured", run_id=f"run-{label}", metrics=metrics
        )

    rows = [row("a", 0.30, 0.020), row("b", 0.20, 0.045), row("c", 0.10, 0.080), row("d", 0.25, 0.060)]
    front = sweep_front(rows, tmp_path, "test")
    assert front.latency_metric == "latency/itl_p50_s"
    assert [p.key for p in front.front] == ["run-a", "run-b", "run-c"]
    assert {k: v[PARETO_TAG] for k, v in front.child_tags.items()} == {
        "run-a": "true", "run-b": "true", "run-c": "true", "run-d": "false",
    }  # fmt: skip
    assert front.figures == [tmp_path / "pareto.png"] and front.figures[0].read_bytes()[:4] == b"\x89PNG"
    assert front.parent_tags["llem.pareto.front"] == '{"p":"a"}, {"p":"b"}, {"p":"c"}'


def test_a_run_with_quality_reports_its_perplexity_and_says_random_weights_mean_nothing(
    tmp_path: Path,
) -> None:
    from llem_mlflow.run.execute import run_experiment

    result = run_experiment(
        None, model="llem/tiny-gpt2", weights="random", n=2, batch_size=2, max_output_tokens=2,
        quality="perplexity", output_dir=str(tmp_path), baseline_s=0.0, mlflow=False,
    )  # fmt: skip
    q = result.quality
    assert q is not None and q.metric == "perplexity" and q.value is not None and q.tokens == 2047
    assert 300 < q.value < 3000  # a random model is about as unsure as its 1,000-token vocabulary
    assert q.note is not None and "random weights" in q.note
    assert result.mlflow_metrics()["quality/perplexity"] == pytest.approx(q.value, rel=1e-5)


def test_closing_a_sweep_parent_tags_its_children_and_logs_pareto_png(tmp_path: Path) -> None:
    from llem_mlflow.tracking.sweep_runs import SweepParent, close_sweep_parent

    client = MlflowClient()
    experiment = client.get_experiment_by_name("Default").experiment_id  # type: ignore[union-attr]
    parent = client.create_run(experiment).info.run_id
    child = client.create_run(experiment).info.run_id
    png = tmp_path / "pareto.png"
    png.write_bytes(b"\x89PNG fake")
    close_sweep_parent(
        SweepParent(parent, experiment, "", {}, False),
        {"llem.pareto.latency_metric": "latency/itl_p50_s"},
        [png],
        tracking_uri=None,
        failed=False,
        child_tags={child: {"llem.pareto": "true"}},
    )
    assert client.get_run(child).data.tags["llem.pareto"] == "true"
    assert client.get_run(parent).data.tags["llem.pareto.latency_metric"] == "latency/itl_p50_s"
    assert [a.path for a in client.list_artifacts(parent)] == ["pareto.png"]


def test_a_sweep_on_a_fake_gpu_tags_its_front_and_logs_pareto_png(tmp_path: Path) -> None:
    """Three precisions on a board whose busy time (energy) and decode step (ITL) are scripted:
    fp32 0.05 s busy at 1 ms/step, bf16 0.08 s at 2 ms (dominated by fp32), fp16 0.02 s at 3 ms."""
    import time

    import yaml

    from llem_mlflow.protocols import CudaDeviceId
    from llem_mlflow.run.execute import GpuSet
    from llem_mlflow.sweep import execute as sweep
    from tests.fakes import FakeBackend, PoweredGpu

    board = PoweredGpu(idle_w=100.0, busy_w=400.0)
    script = {"fp32": (0.05, 0.001), "bf16": (0.08, 0.002), "fp16": (0.02, 0.003)}

    def make(cfg: Any) -> FakeBackend:
        busy_s, step_s = script[cfg.precision]

        def busy() -> None:
            board._set_power(board.busy_w)
            time.sleep(busy_s)
            board._set_power(board.idle_w)

        cuda0 = CudaDeviceId(0, "GPU-fake-0", None)
        return FakeBackend(device="cuda", cuda_devices=[cuda0], on_generate=busy, decode_step_s=step_s)

    path = tmp_path / "sweep.yaml"
    data = {"n": 4, "batch_size": 2, "max_input_tokens": 4, "max_output_tokens": 4, "baseline_s": 0.1,
            "idle_after_s": 0.0, "output_dir": str(tmp_path / "out"), "experiment_name": "front",
            "sweep": {"precision": ["fp32", "bf16", "fp16"]}}  # fmt: skip
    path.write_text(yaml.safe_dump(data))
    parts = sweep.Parts(
        make_backend=make, free_memory=lambda: None, store_probe=lambda c: None,
        gpus=lambda ids: GpuSet([board.device], "580"),
    )  # fmt: skip
    outcome = sweep.run_sweep(path, parts)

    client = MlflowClient()
    assert outcome.parent_run_id is not None
    assert "pareto.png" in {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["llem.pareto.latency_metric"] == "latency/itl_p50_s"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{outcome.parent_run_id}'"
    )
    on_front = {c.data.params["precision"]: c.data.tags["llem.pareto"] for c in children}
    assert on_front == {"fp32": "true", "bf16": "false", "fp16": "true"}


def test_with_a_quality_figure_the_sweep_also_has_an_energy_quality_front(tmp_path: Path) -> None:
    from llem_mlflow.sweep.front import QUALITY_TAG, sweep_front
    from llem_mlflow.sweep.plan import Point
    from llem_mlflow.sweep.summary import Row

    def row(label: str, j: float, itl: float, ppl: float) -> Row:
        metrics = {"energy/per_output_token_j": j, "latency/itl_p50_s": itl, "quality/perplexity": ppl}
        return Row(
            Point(overrides={"p": label}, config=None), "measured", run_id=f"run-{label}", metrics=metrics
        )

    # by hand, energy against perplexity: a 0.30 J at 10, b 0.20 at 12, c 0.10 at 30, d 0.25 at 15:
    # d is dominated by b (less energy and lower perplexity); a, b, c trade one for the other
    rows = [
        row("a", 0.30, 0.020, 10),
        row("b", 0.20, 0.045, 12),
        row("c", 0.10, 0.080, 30),
        row("d", 0.25, 0.060, 15),
    ]
    front = sweep_front(rows, tmp_path, "test")
    assert {k: v[QUALITY_TAG] for k, v in front.child_tags.items()} == {
        "run-a": "true", "run-b": "true", "run-c": "true", "run-d": "false",
    }  # fmt: skip
    assert front.figures == [tmp_path / "pareto.png", tmp_path / "pareto_quality.png"]
    assert front.parent_tags["llem.pareto.quality_front"] == '{"p":"a"}, {"p":"b"}, {"p":"c"}'


GPU_GATE = FIXTURES / "h100_gate"  # four real gpt2 runs on an H100 (tests/fixtures/README.md)


def logged_gpu(name: str, tmp_path: Path) -> str:
    """Log the GPU fixture run ``name`` (a copy of its folder) into the test's store; its run id."""
    folder = tmp_path / name
    shutil.copytree(GPU_GATE / name, folder)
    return recording.log_folder(folder, None, "gpu-gate", name).run_id


def test_the_gate_on_real_gpu_runs_gives_0_1_and_3(tmp_path: Path) -> None:
    runs = {n: logged_gpu(n, tmp_path) for n in ("gate-b8", "gate-b8-again", "gate-b64", "gate-b8-steady")}

    def gate(candidate: str, baseline: str) -> tuple[int, str, str]:
        return invoke(runs[candidate], "--baseline", runs[baseline], "--fail-if-worse", "5")

    code, stdout, stderr = gate("gate-b8-again", "gate-b8")
    assert code == 0, stderr  # the same configuration twice: -0.6 % on the H100
    assert "PASS" in stdout
    code, stdout, stderr = gate("gate-b8", "gate-b64")
    assert code == 1, stderr  # batch 8 costs ~4.4x the energy per token of batch 64
    assert "FAIL (worse)" in stdout and "+337.7 %" in stdout
    code, stdout, stderr = gate("gate-b8-steady", "gate-b8")
    assert code == 3
    assert "measurement_methodology" in stdout + stderr
