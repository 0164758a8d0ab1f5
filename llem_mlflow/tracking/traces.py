"""Energy on MLflow GenAI traces: ``track()`` blocks annotate the active span; the ``energy`` scorer sums it.

When a ``track()`` block ends inside an MLflow trace span of its thread (``@mlflow.trace``,
``mlflow.start_span``, or the span ``mlflow.genai.evaluate`` opens around ``predict_fn``),
``annotate_active_span`` sets on that span: ``llem.energy_j`` (GPU energy in J, null when not measured),
``llem.duration_s``, ``llem.avg_power_w``, ``llem.status`` (``ok``, ``failed``, ``energy_incomplete``,
``energy_shared``), ``llem.energy_note`` (why energy is missing, partial or shared), ``llem.gpu_energy_j``
(J per CUDA index, a JSON object) and ``llem.blocks`` (the tracked blocks counted, with their edges).
Several blocks in one span add up; a block nested in another of the same thread is already inside the
outer one's energy and is not counted twice. Annotating never raises: a failure is one warning.

``energy`` (built lazily by ``energy_scorer()``; mlflow is imported only then) is a scorer for
``mlflow.genai.evaluate``: the energy of a row's trace is the sum over its tracked blocks (outermost
ones only), in J, with a rationale; null with the reason when energy was not measured (no GPU),
incomplete, or not this row's alone.

Parallel predictions. ``track()`` reads whole-GPU energy counters, so blocks that run at the same time
each count the others' work, and ``mlflow.genai.evaluate`` runs ``predict_fn`` in a pool of threads
(``MLFLOW_GENAI_EVAL_MAX_WORKERS``, 10 by default). The choice here: energy per row is only given for
predictions run one at a time. ``evaluate_with_energy`` runs ``mlflow.genai.evaluate`` with
``MLFLOW_GENAI_EVAL_MAX_WORKERS=1`` and the scorer added. The scorer gives null (saying why) for a row
whose blocks ran on ``mlflow.genai.evaluate``'s predict threads while ``MLFLOW_GENAI_EVAL_MAX_WORKERS``
was not 1, and for a row whose blocks overlapped another trace's tracked blocks in this process (seen
when the later of two overlapping blocks ends, marked ``llem.status = energy_shared`` on its span, or
when the row is scored).
Blocks of other processes on the same GPU are not seen, nor GPU work that is not tracked: a scorer that
runs a local model on the same GPU (MLflow scores one row while the next is predicted) adds its energy
to the prediction then measured.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from llem_mlflow.measure.tracked import Tracked

log = logging.getLogger(__name__)

ENERGY_J = "llem.energy_j"
DURATION_S = "llem.duration_s"
AVG_POWER_W = "llem.avg_power_w"
STATUS = "llem.status"
ENERGY_NOTE = "llem.energy_note"
GPU_ENERGY_J = "llem.gpu_energy_j"
BLOCKS = "llem.blocks"
SHARED = "energy_shared"
WORKERS_ENV = "MLFLOW_GENAI_EVAL_MAX_WORKERS"
SCORER_NAME = "energy"
EVAL_THREADS = "MlflowGenAIEvalPredict"  # the name prefix of mlflow.genai.evaluate's predict threads (3.13+)
REGISTRY_SIZE = 4096  # the most recent tracked blocks of this process that overlaps are checked against

_PROCESS = uuid.uuid4().hex[:12]
_lock = threading.Lock()
_registry: deque[Block] = deque(maxlen=REGISTRY_SIZE)
_count = 0
_warned: set[str] = set()
_scorer: Any = None


@dataclass(frozen=True)
class Block:
    """One tracked block as a span keeps it: edges (epoch s), energy (J, None = unknown), where it ran."""

    id: str
    name: str
    start_s: float
    end_s: float
    energy_j: float | None
    gpu_energy_j: dict[str, float | None] | None
    status: str
    note: str | None
    thread: int
    trace_id: str = ""
    thread_name: str = ""
    workers: str = ""  # MLFLOW_GENAI_EVAL_MAX_WORKERS when the block ended ("" when unset)

    def overlaps(self, other: Block) -> bool:
        """The two blocks ran at the same time for a while (touching edges do not count)."""
        return self.start_s < other.end_s and other.start_s < self.end_s

    def contains(self, other: Block) -> bool:
        """``other`` ran inside this block on the same thread (nested ``track()``): its energy is in ours."""
        return (
            self.thread == other.thread
            and self.start_s <= other.start_s
            and other.end_s <= self.end_s
            and self.id != other.id
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @staticmethod
    def from_json(raw: Mapping[str, Any]) -> Block:
        fields = {k: raw[k] for k in Block.__dataclass_fields__ if k in raw}
        return Block(**fields)


def annotate_active_span(tracked: Tracked) -> bool:
    """Put ``tracked``'s energy on the MLflow span active in this thread; True when a span was annotated.

    Never raises: a failure is logged once as a warning and gives False.
    """
    try:
        span = _active_span()
        if span is None:
            return False
        block = _remember(tracked, str(span.trace_id))
        blocks = [*_span_blocks(span), block]
        span.set_attributes(span_attributes(blocks))
        return True
    except Exception as exc:  # tracing must never break the user's block
        _warn_once("annotate", f"energy could not be put on the MLflow trace span: {exc}")
        return False


def _active_span() -> Any:
    """The live MLflow span of this thread, or None (without importing mlflow when nothing imported it)."""
    if "mlflow" not in sys.modules:
        return None
    import mlflow
    from mlflow.entities.span import NoOpSpan

    span = mlflow.get_current_active_span()
    return None if span is None or isinstance(span, NoOpSpan) else span


def _remember(tracked: Tracked, trace_id: str) -> Block:
    """``tracked`` as a ``Block``, kept in this process's registry; ``energy_shared`` when it overlapped
    a block of another trace that has already ended."""
    global _count
    with _lock:
        _count += 1
        block = Block(
            id=f"{_PROCESS}-{_count}",
            name=tracked.name,
            start_s=tracked.start_s,
            end_s=tracked.end_s,
            energy_j=tracked.total_energy_j,
            gpu_energy_j=_per_gpu(tracked),
            status=tracked.status,
            note=tracked.energy_note,
            thread=threading.get_ident(),
            trace_id=trace_id,
            thread_name=threading.current_thread().name,
            workers=os.environ.get(WORKERS_ENV, "").strip(),
        )
        others = sum(b.trace_id != trace_id and b.overlaps(block) for b in _registry)
        if others:
            note = "; ".join(n for n in (_shared_note(others), block.note) if n)
            block = dataclasses.replace(block, status=SHARED, note=note)
        _registry.append(block)
    return block


def _per_gpu(tracked: Tracked) -> dict[str, float | None] | None:
    return None if tracked.energy_j is None else {str(k): v for k, v in tracked.energy_j.items()}


def _total(blocks: list[Block]) -> float | None:
    """The blocks' energies summed; None when there is none or any is unknown."""
    if not blocks or any(b.energy_j is None for b in blocks):
        return None
    return sum(b.energy_j for b in blocks if b.energy_j is not None)


def _shared_note(count: int) -> str:
    return (
        f"shared: ran at the same time as {count} tracked block(s) of other traces in this process, "
        f"whose work the whole-GPU counters also count; run predictions one at a time ({WORKERS_ENV}=1)"
    )


def _span_blocks(span: Any) -> list[Block]:
    """The blocks a span already carries (several ``track()`` blocks may end inside one span)."""
    raw = span.get_attribute(BLOCKS)
    if isinstance(raw, str):
        raw = json.loads(raw)
    return [Block.from_json(b) for b in raw or []]


def outermost(blocks: Iterable[Block]) -> list[Block]:
    """The blocks not nested in another block of the same thread (a nested block's energy is in its outer)."""
    items = list(blocks)
    return [b for b in items if not any(o.contains(b) for o in items)]


def span_attributes(blocks: list[Block]) -> dict[str, Any]:
    """The ``llem.*`` attributes of a span that holds ``blocks``: their outermost ones summed."""
    top = outermost(blocks)
    energy = _total(top)
    duration = sum(b.end_s - b.start_s for b in top)
    gpus: dict[str, float | None] = {}
    for b in top:
        for gpu, joules in (b.gpu_energy_j or {}).items():
            before = gpus.get(gpu, 0.0)
            gpus[gpu] = None if before is None or joules is None else before + joules
    notes = list(dict.fromkeys(b.note for b in top if b.note))
    attributes: dict[str, Any] = {
        ENERGY_J: None if energy is None else round(energy, 6),
        DURATION_S: round(duration, 6),
        AVG_POWER_W: None if energy is None or duration <= 0 else round(energy / duration, 3),
        STATUS: _worst(b.status for b in top),
        GPU_ENERGY_J: gpus if any(b.gpu_energy_j is not None for b in top) else None,
        BLOCKS: [b.to_json() for b in blocks],
    }
    if notes:
        attributes[ENERGY_NOTE] = "; ".join(notes)[:5000]
    return attributes


def _worst(statuses: Iterable[str]) -> str:
    """The status that matters most: ``energy_shared``, then ``failed``, ``energy_incomplete``, ``ok``."""
    seen = set(statuses)
    return next((s for s in (SHARED, "failed", "energy_incomplete") if s in seen), "ok")


@dataclass(frozen=True)
class TraceEnergy:
    """A trace's energy as the scorer gives it: joules (None when not attributable) and why."""

    energy_j: float | None
    rationale: str


def trace_energy(spans: Iterable[Any]) -> TraceEnergy:
    """The energy of a trace from its spans' ``llem.blocks``: the outermost blocks summed, or why not."""
    annotated = [(s, _span_blocks(s)) for s in spans]
    annotated = [(s, blocks) for s, blocks in annotated if blocks]
    if not annotated:
        return TraceEnergy(None, "no tracked block in this trace: run the work inside llem_mlflow.track()")
    blocks = outermost(b for _, bs in annotated for b in bs)
    why = _not_attributable(blocks)
    if why is not None:
        return TraceEnergy(None, why)
    total = sum(b.energy_j for b in blocks if b.energy_j is not None)
    duration = sum(b.end_s - b.start_s for b in blocks)
    return TraceEnergy(
        round(total, 6),
        f"{len(annotated)} span(s), {len(blocks)} tracked block(s): {total:.4g} J measured by NVML "
        f"over {duration:.3g} s",
    )


def _not_attributable(blocks: list[Block]) -> str | None:
    """Why the sum of ``blocks`` is not this trace's energy, or None when it is."""
    missing = [b for b in blocks if b.energy_j is None]
    if missing:
        notes = list(dict.fromkeys(b.note or f"block {b.name!r} has no energy" for b in missing))
        state = "not measured" if len(missing) == len(blocks) else "incomplete"
        return f"energy {state}: " + "; ".join(n.removeprefix("not measured: ") for n in notes)
    marked = [b.note for b in blocks if b.status == SHARED and b.note]
    if marked:
        return f"energy {marked[0]}"
    overlapped = sum(_overlapped(b) for b in blocks)
    if overlapped:
        return f"energy {_shared_note(overlapped)}"
    concurrent = [(a, b) for a in blocks for b in blocks if a.id < b.id and a.overlaps(b)]
    if concurrent:
        return "energy shared: tracked blocks of this trace ran at the same time on several threads"
    parallel = [b for b in blocks if b.thread_name.startswith(EVAL_THREADS) and b.workers != "1"]
    if parallel:
        workers = parallel[0].workers or "unset (MLflow's default pool)"
        return (
            f"energy not attributed: predictions may have run in parallel ({WORKERS_ENV} was {workers}) and "
            "whole-GPU counters count every concurrent prediction; use evaluate_with_energy or "
            f"{WORKERS_ENV}=1"
        )
    return None


def _overlapped(block: Block) -> int:
    """How many blocks of other traces recorded in this process ran at the same time as ``block``."""
    with _lock:
        return sum(b.trace_id != block.trace_id and b.overlaps(block) for b in _registry)


def _score_energy(trace: Any) -> Any:
    """The ``energy`` scorer's body: a ``Feedback`` with the trace's joules (or None) and a rationale."""
    from mlflow.entities import Feedback

    spans = [] if trace is None else trace.data.spans
    result = trace_energy(spans)
    return Feedback(name=SCORER_NAME, value=result.energy_j, rationale=result.rationale)


def energy_scorer() -> Any:
    """The ``energy`` scorer for ``mlflow.genai.evaluate`` (built once; imports mlflow)."""
    global _scorer
    if _scorer is None:
        from mlflow.genai.scorers import scorer

        built = scorer(name=SCORER_NAME)(_score_energy)
        with _lock:
            _scorer = _scorer or built
    return _scorer


def evaluate_with_energy(
    data: Any, predict_fn: Callable[..., Any] | None = None, scorers: Iterable[Any] = (), **kwargs: Any
) -> Any:
    """``mlflow.genai.evaluate`` with the ``energy`` scorer added and predictions run one at a time.

    Sets ``MLFLOW_GENAI_EVAL_MAX_WORKERS=1`` for the call (process-wide; put back afterwards), so that no
    two tracked predictions share the GPU's energy counters. Returns MLflow's ``EvaluationResult``.
    """
    import mlflow.genai

    chosen = list(scorers)
    if not any(getattr(s, "name", None) == SCORER_NAME for s in chosen):
        chosen.append(energy_scorer())
    before = os.environ.get(WORKERS_ENV)
    os.environ[WORKERS_ENV] = "1"
    try:
        return mlflow.genai.evaluate(data=data, predict_fn=predict_fn, scorers=chosen, **kwargs)
    finally:
        if before is None:
            os.environ.pop(WORKERS_ENV, None)
        else:
            os.environ[WORKERS_ENV] = before


def _warn_once(key: str, message: str) -> None:
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(message)


def __getattr__(name: str) -> Any:
    """``energy``: the scorer, built on first use (so importing this module stays free of mlflow)."""
    if name == "energy":
        return energy_scorer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
