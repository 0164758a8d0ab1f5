"""Logging one ExperimentResult into its run: params, tags, summary and per-cycle metrics, the power
trace as metric history, the prompt set as a dataset input, and the result files as artifacts.

Keys and value rounding come from ``ExperimentResult``'s ``mlflow_params``/``mlflow_tags``/
``mlflow_metrics``; this module keeps no key list of its own. The run comes from ``run_selection``;
every run this module created or resumed is ended FAILED when logging fails, and otherwise with the
measurement's own end time (``set_terminated(end_time=result.end_time)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llem_mlflow.errors import TrackingError
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results.schema import ExperimentResult, mlflow_power_point
from llem_mlflow.secrets import scrub_secrets, scrubbed_stdout
from llem_mlflow.tracking.connection import guarded
from llem_mlflow.tracking.run_endings import LoggingCut, end_status
from llem_mlflow.tracking.run_selection import RunTarget, select_run
from llem_mlflow.tracking.runs import ChildOf, LoggedRun, epoch_ms, run_tags
from llem_mlflow.tracking.store import open_client
from llem_mlflow.tracking.store_probe import one_line
from llem_mlflow.tracking.uris import scrub_uri, target_tracking_uri

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput, Metric, Param
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

PARAM_CONFLICT_PREFIX = "cfg."
#: Most ``power/gpu{i}_w`` points logged per GPU (``trace.thin_power``); the Parquet trace keeps every sample.
MAX_POWER_POINTS = 2000


def record_result(
    result: ExperimentResult,
    files: Sequence[Path],
    trace: PowerTrace,
    *,
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
    child_of: ChildOf | None = None,
) -> LoggedRun:
    """Log ``result``, its power ``trace`` and ``files`` (at the artifact root) to MLflow.

    ``run_name`` defaults to ``default_run_name(result)`` for a new run; a run ``mlflow run`` made
    gets it only if MLflow gave that run a random name (no ``--run-name``). ``child_of``: log into a
    new run nested under that parent (see ``run_selection`` for how the run is chosen otherwise).

    Raises:
        TrackingError: one line; the store is unreachable, the run cannot be created or resumed,
            or logging failed (a run this call created or resumed is then marked FAILED).
    """
    target = select_run(result, tracking_uri, experiment_name, run_name, child_of)
    end_ms = epoch_ms(result.end_time)
    try:
        _log_everything(target, result, files, trace)
    except KeyboardInterrupt:  # Ctrl-C/SIGTERM: the caller spools the result, then ends the run (end_cut)
        raise LoggingCut(target.run_id if target.owned else None, target.uri) from None
    except Exception as exc:
        if target.owned:
            _end_quietly(target, "FAILED", end_ms)
        raise TrackingError(
            f"logging to MLflow run {target.run_id} at {scrub_uri(target.uri)} failed: "
            f"{one_line(str(exc))}. "
            + ("The run was marked FAILED. " if target.owned else "Your active run was left open. ")
            + "Check the tracking server and the result files, then log again."
        ) from None  # the cause's text (scrubbed above) may hold credentials
    if target.owned:
        final = end_status(result)
        guarded(target.uri, f"mark run {target.run_id} {final}", lambda: _end(target, final, end_ms))
    return LoggedRun(target.run_id, target.experiment_id, scrub_uri(target.uri))


def log_text_quietly(tracking_uri: str | None, run_id: str, name: str, text: str) -> bool:
    """Log ``text`` as artifact ``name`` of run ``run_id``; whether it was. A failure only warns (MLflow
    writes it to a temp file first, and a full disk may have no room for that)."""
    uri = target_tracking_uri(tracking_uri)
    try:
        open_client(uri).log_text(run_id, text, name)
    except Exception as exc:
        log.warning("%s not logged to MLflow run %s: %s", name, run_id, one_line(scrub_secrets(str(exc))))
        return False
    return True


def _log_everything(
    target: RunTarget, result: ExperimentResult, files: Sequence[Path], trace: PowerTrace
) -> None:
    client, run_id = target.client, target.run_id
    existing = client.get_run(run_id).data.params
    client.log_batch(
        run_id,
        metrics=_summary_metrics(result)
        + _cycle_metrics(result)
        + _trace_metrics(trace, _trace_origin_ms(result, trace)),
        params=_params(result.mlflow_params(), existing),
        tags=run_tags(result.mlflow_tags()),
    )
    _log_dataset(client, run_id, _prompt_dataset(result))
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"artifact file {path} does not exist")
        client.log_artifact(run_id, str(path))


def _log_dataset(client: MlflowClient, run_id: str, dataset: DatasetInput) -> None:
    """Log the dataset input; once more after a failure.

    MLflow's SQL store looks the dataset up, then inserts it: two clients logging the same new dataset
    at once (a sweep over two GPUs) race, and the loser fails on the unique key; its second try finds
    the dataset the winner inserted (2 spawned processes x 20 new datasets on sqlite: 12 collisions).
    """
    try:
        client.log_inputs(run_id, datasets=[dataset])
    except Exception:
        client.log_inputs(run_id, datasets=[dataset])


def _prompt_dataset(result: ExperimentResult) -> DatasetInput:
    """The prompt set as an MLflow dataset input (name, digest, source), context ``measurement``.

    A .jsonl file: its name, the first 16 hex digits of its SHA-256 (``resolved.dataset``), source = the
    path as configured. Synthetic prompts: ``synthetic``, digested from what decides them (seed, n, length).
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    cfg = result.config
    if cfg.dataset == "synthetic" or result.resolved is None:
        spec = f"synthetic seed={cfg.seed} n={cfg.n} max_input_tokens={cfg.max_input_tokens}"
        digest = hashlib.sha256(spec.encode()).hexdigest()[:16]
        dataset = Dataset(name="synthetic", digest=digest, source_type="code", source=spec)
    else:
        digest = result.resolved.dataset.split(":")[-1][:16]
        dataset = Dataset(name=Path(cfg.dataset).name, digest=digest, source_type="local", source=cfg.dataset)
    return DatasetInput(dataset=dataset, tags=[InputTag(key="mlflow.data.context", value="measurement")])


def _params(ours: dict[str, str], existing: dict[str, str]) -> list[Param]:
    """Params not yet logged; a key pre-logged with another value goes under ``cfg.<key>``.

    Params are immutable, and ``mlflow run`` pre-logs its ``-P`` values as raw strings.
    """
    from mlflow.entities import Param

    out: list[Param] = []
    for key, value in ours.items():
        if existing.get(key, value) != value:
            key = PARAM_CONFLICT_PREFIX + key
        if key not in existing:
            out.append(Param(key, value))
    return out


def _summary_metrics(result: ExperimentResult) -> list[Metric]:
    """Summary metrics at step 0, stamped with the measurement's end time."""
    from mlflow.entities import Metric

    end_ms = epoch_ms(result.end_time)
    return [Metric(k, v, end_ms, 0) for k, v in result.mlflow_metrics().items()]


def _cycle_metrics(result: ExperimentResult) -> list[Metric]:
    """``cycles/<figure>`` histories: step = cycle index, timestamp = the cycle's end (2+ cycles only)."""
    from mlflow.entities import Metric

    return [
        Metric(key, value, int(end_s * 1000), step)
        for key, points in result.mlflow_cycle_history().items()
        for step, end_s, value in points
    ]


def _trace_metrics(trace: PowerTrace, origin_ms: int) -> list[Metric]:
    """``power/gpu{i}_w`` history, one point per sample up to ``MAX_POWER_POINTS`` per GPU, W to 1 mW.

    Longer traces are thinned to bucket means (``trace.thin_power``): logging every sample of a 1-hour
    trace to a SQL store took ~0.4 ms a point (36,000 points: ~15 s). timestamp = the point's own epoch
    ms (floored); step = timestamp - ``origin_ms``: integer ms since the measured window started, so Step
    and wall-time axes agree. Samples before the window (idle baseline, warm-up) get negative steps,
    which MLflow 3.17 stores and charts (int64 steps; checked on sqlite and over HTTP).
    """
    from mlflow.entities import Metric

    points = []
    for gpu in trace.gpus():
        for timestamp_s, power_w in trace.thinned_power(gpu, MAX_POWER_POINTS):
            key, value = mlflow_power_point(gpu, power_w)
            timestamp_ms = int(timestamp_s * 1000)
            points.append(Metric(key, value, timestamp_ms, timestamp_ms - origin_ms))
    return points


def _trace_origin_ms(result: ExperimentResult, trace: PowerTrace) -> int:
    """Epoch ms of the measured window's start; the first sample's without a ``measure`` window."""
    window = result.windows.get("measure")
    if window is not None:
        return int(window.start_s * 1000)
    first_s = trace.first_time_s()
    return int((0.0 if first_s is None else first_s) * 1000)


def _end_quietly(target: RunTarget, status: str, end_ms: int) -> None:
    with contextlib.suppress(Exception):  # the original error is the one worth reporting
        _end(target, status, end_ms)


def _end(target: RunTarget, status: str, end_ms: int) -> None:
    with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" here
        target.client.set_terminated(target.run_id, status=status, end_time=end_ms)
