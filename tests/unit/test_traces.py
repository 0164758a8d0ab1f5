"""Energy on MLflow GenAI traces: a ``track()`` block annotates the active span, the ``energy`` scorer sums
it, concurrent predictions are refused, and the GenAI example's evaluation carries the energy assessment.

Real MLflow (the test's own sqlite store, conftest's ``isolated_mlflow``), fake GPUs with scripted counters.
"""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from llem_mlflow.measure.tracked import Tracked
from llem_mlflow.protocols import GpuDevice
from llem_mlflow.run.track import track
from llem_mlflow.tracking import traces
from tests.fakes import FakeDevice

ROOT = Path(__file__).resolve().parents[2]
OpenGpus = Callable[[Sequence[int] | None], tuple[list[GpuDevice], Callable[[], None], str | None]]


def _gpus(*devices: FakeDevice) -> OpenGpus:
    return lambda gpus: (list(devices), lambda: None, None)


def _no_nvml(gpus: Sequence[int] | None) -> tuple[list[GpuDevice], Callable[[], None], str | None]:
    return [], lambda: None, "energy not measured: no NVIDIA driver"


def _fake_track(name: str, *joules: float, open_gpus: OpenGpus | None = None) -> track:
    """A ``track`` block on fake GPU(s) whose counters rise by ``joules`` (one GPU per value)."""
    devices = [
        FakeDevice(i, uuid=f"GPU-fake-{i}", energy_script=[100.0, 100.0 + j]) for i, j in enumerate(joules)
    ]
    return track(
        name, open_gpus=open_gpus or _gpus(*devices), sync=lambda: None, logger=lambda t: None,
        sampling_interval_s=0.005,
    )  # fmt: skip


def _trace(trace_id: str) -> Any:
    import mlflow

    mlflow.flush_trace_async_logging()  # traces reach the store from a background queue
    trace = mlflow.get_trace(trace_id)
    assert trace is not None, trace_id
    return trace


def _llem(span: Any) -> dict[str, Any]:
    return {k: v for k, v in span.attributes.items() if k.startswith("llem.")}


@pytest.fixture(autouse=True)
def fresh_tracing(monkeypatch: pytest.MonkeyPatch, isolated_mlflow: str) -> Iterator[None]:
    """Traces go to this test's store (MLflow sets its exporter up once per process: reset it); no
    MLFLOW_GENAI_EVAL_MAX_WORKERS from outside; the registry of blocks starts empty."""
    import mlflow

    monkeypatch.delenv(traces.WORKERS_ENV, raising=False)
    traces._registry.clear()
    mlflow.tracing.reset()
    yield
    mlflow.tracing.reset()
    traces._registry.clear()


def test_a_tracked_block_puts_the_fake_gpus_exact_joules_on_the_active_span() -> None:
    import mlflow

    with mlflow.start_span("answer") as span, _fake_track("generate", 30.0, 10.0) as tracked:
        pass
    attrs = _llem(_trace(span.trace_id).data.spans[0])
    assert attrs[traces.ENERGY_J] == 40.0 and attrs[traces.GPU_ENERGY_J] == {"0": 30.0, "1": 10.0}
    assert attrs[traces.DURATION_S] == pytest.approx(tracked.duration_s, abs=1e-6)
    assert attrs[traces.AVG_POWER_W] == pytest.approx(40.0 / tracked.duration_s, rel=1e-3)
    assert attrs[traces.STATUS] == "ok" and traces.ENERGY_NOTE not in attrs
    assert [b["name"] for b in attrs[traces.BLOCKS]] == ["generate"]


def test_without_an_active_span_nothing_is_annotated_and_no_trace_is_made() -> None:
    import mlflow

    with _fake_track("outside", 5.0) as tracked:
        pass
    assert tracked.total_energy_j == 5.0
    assert traces.annotate_active_span(tracked) is False
    assert len(mlflow.search_traces(return_type="list")) == 0


def test_blocks_in_one_span_add_up_and_a_nested_block_is_not_counted_twice() -> None:
    import mlflow

    outer = FakeDevice(0, energy_script=[0.0, 10.0])
    with mlflow.start_span("answer") as span:
        with _fake_track("first", 2.0):
            pass
        with (
            track("outer", open_gpus=_gpus(outer), sync=lambda: None, logger=lambda t: None),
            _fake_track("inner", 4.0),  # its 4 J are inside the outer block's 10 J
        ):
            pass
    attrs = _llem(_trace(span.trace_id).data.spans[0])
    assert attrs[traces.ENERGY_J] == 12.0 and attrs[traces.GPU_ENERGY_J] == {"0": 12.0}
    assert sorted(b["name"] for b in attrs[traces.BLOCKS]) == ["first", "inner", "outer"]


def test_the_scorer_sums_the_blocks_of_every_span_of_the_trace() -> None:
    import mlflow
    from mlflow.entities import Feedback

    with mlflow.start_span("agent") as root:
        with _fake_track("plan", 1.5):
            pass
        with mlflow.start_span("tool"), _fake_track("tool-call", 2.25, 0.25):
            pass
    feedback = traces.energy_scorer()(trace=_trace(root.trace_id))
    assert isinstance(feedback, Feedback) and feedback.name == "energy"
    assert feedback.value == 4.0
    assert feedback.rationale is not None and feedback.rationale.startswith(
        "2 span(s), 2 tracked block(s): 4 J measured by NVML over "
    )


def test_on_cpu_the_span_says_why_and_the_scorer_gives_none_with_the_reason() -> None:
    import mlflow

    with mlflow.start_span("answer") as span, _fake_track("generate", open_gpus=_no_nvml):
        pass
    trace = _trace(span.trace_id)
    attrs = _llem(trace.data.spans[0])
    assert attrs[traces.ENERGY_J] is None and attrs[traces.AVG_POWER_W] is None
    assert (
        attrs[traces.GPU_ENERGY_J] is None and attrs[traces.ENERGY_NOTE] == "not measured: no NVIDIA driver"
    )
    feedback = traces.energy_scorer()(trace=trace)
    assert feedback.value is None and feedback.rationale == "energy not measured: no NVIDIA driver"


def test_a_trace_without_tracked_blocks_gets_none_and_says_so() -> None:
    import mlflow

    with mlflow.start_span("plain") as span:
        pass
    feedback = traces.energy_scorer()(trace=_trace(span.trace_id))
    assert feedback.value is None and "no tracked block" in feedback.rationale


def test_blocks_of_two_traces_that_overlap_in_time_are_marked_shared_and_not_scored() -> None:
    import mlflow

    both_inside = threading.Barrier(2, timeout=10)
    first_done = threading.Event()
    trace_ids: dict[str, str] = {}

    def predict(name: str) -> None:
        with mlflow.start_span(name) as span, _fake_track(name, 3.0):
            trace_ids[name] = span.trace_id
            both_inside.wait()  # the two blocks run at the same time
            if name == "late":
                first_done.wait(timeout=10)
        if name == "early":
            first_done.set()

    threads = [threading.Thread(target=predict, args=(n,)) for n in ("early", "late")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    early, late = (_trace(trace_ids[n]) for n in ("early", "late"))
    assert _llem(early.data.spans[0])[traces.STATUS] == "ok"  # it ended first: nothing seen yet
    assert _llem(late.data.spans[0])[traces.STATUS] == traces.SHARED
    assert "1 tracked block(s) of other traces" in _llem(late.data.spans[0])[traces.ENERGY_NOTE]
    for trace in (early, late):  # the early one is caught when scored: the registry saw the late one
        feedback = traces.energy_scorer()(trace=trace)
        assert feedback.value is None and feedback.rationale.startswith("energy shared:"), feedback.rationale


def test_annotating_never_raises_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mlflow

    class BrokenSpan:
        trace_id = "tr-broken"

        def get_attribute(self, key: str) -> Any:
            return None

        def set_attributes(self, attributes: dict[str, Any]) -> None:
            raise RuntimeError("exporter gone")

    monkeypatch.setattr(mlflow, "get_current_active_span", BrokenSpan)
    monkeypatch.setattr(traces, "_warned", set())
    tracked = Tracked("x", start_s=1.0, end_s=2.0, energy_j={0: 1.0})
    with caplog.at_level(logging.WARNING, logger=traces.__name__):
        assert traces.annotate_active_span(tracked) is False
        assert traces.annotate_active_span(tracked) is False
    messages = [r.getMessage() for r in caplog.records if r.name == traces.__name__]
    assert messages == ["energy could not be put on the MLflow trace span: exporter gone"]


def _evaluate(evaluate: Callable[..., Any]) -> list[dict[str, Any]]:
    """Evaluate two questions whose predictions each use 2.5 J of a fake GPU; the energy assessments."""
    import mlflow

    counter = itertools.count()

    def predict_fn(question: str) -> str:
        gpu = FakeDevice(0, energy_script=lambda: 2.5 * next(counter))  # each block: two reads, 2.5 J apart
        with track("generate", open_gpus=_gpus(gpu), sync=lambda: None, logger=lambda t: None):
            return question.upper()

    data = [{"inputs": {"question": q}} for q in ("a?", "b?")]
    with mlflow.start_run() as run:
        evaluate(data=data, predict_fn=predict_fn, scorers=[traces.energy_scorer()])
    found = _run_traces(run.info.experiment_id, run.info.run_id)
    assessments = [a for t in found for a in t.info.assessments if a.name == "energy"]
    return [{"value": a.value, "rationale": a.rationale} for a in assessments]


def _run_traces(experiment_id: str, run_id: str) -> list[Any]:
    import mlflow

    mlflow.flush_trace_async_logging()
    return list(mlflow.search_traces(locations=[experiment_id], run_id=run_id, return_type="list"))


def test_evaluate_with_energy_scores_each_prediction_and_parallel_ones_are_refused() -> None:
    import mlflow.genai

    serial = _evaluate(traces.evaluate_with_energy)
    assert [a["value"] for a in serial] == [2.5, 2.5], serial
    assert traces.WORKERS_ENV not in os.environ  # put back as it was
    parallel = _evaluate(mlflow.genai.evaluate)  # MLflow's default pool of predict threads
    assert [a["value"] for a in parallel] == [None, None], parallel
    assert all("may have run in parallel" in a["rationale"] for a in parallel)


def test_the_scorer_is_importable_without_mlflow_until_used() -> None:
    code = (
        "import sys; import llem_mlflow.tracking.traces as t; assert 'mlflow' not in sys.modules; "
        "from llem_mlflow.tracking.traces import energy; print(type(energy).__name__, energy.name)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [type(traces.energy_scorer()).__name__, "energy"]


@pytest.mark.slow
def test_the_genai_example_runs_and_its_evaluation_run_has_the_energy_assessment(
    isolated_mlflow: str,
) -> None:
    import mlflow

    env = {**os.environ, "MLFLOW_TRACKING_URI": isolated_mlflow, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "genai_energy_eval.py")],
        capture_output=True, text=True, timeout=300, env=env, cwd=Path.cwd(),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "See it in the MLflow UI" in out.stdout
    runs = mlflow.search_runs(experiment_names=["llem-mlflow-genai-energy"], output_format="list")
    assert [r.info.run_name for r in runs] == ["genai-energy-eval"]
    run = runs[0]
    found = _run_traces(run.info.experiment_id, run.info.run_id)
    assert len(found) == 4
    for trace in found:
        energy = [a for a in trace.info.assessments if a.name == "energy"]
        assert len(energy) == 1
        if energy[0].value is None:  # no GPU: not measured, and why
            assert energy[0].rationale.startswith("energy not measured:"), energy[0].rationale
        else:
            assert energy[0].value > 0 and "J measured by NVML" in energy[0].rationale
        assert {a.name for a in trace.info.assessments} >= {"energy", "exact_match"}
        assert any(s.get_attribute(traces.BLOCKS) for s in trace.data.spans)
