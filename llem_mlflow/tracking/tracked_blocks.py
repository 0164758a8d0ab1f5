"""Logging a tracked block (``run.track``'s ``Tracked``) into the active MLflow run: its time, energy,
mean power and power history as ``track/<name>/...`` metrics, its outcome as tags.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llem_mlflow.measure.tracked import Tracked
from llem_mlflow.secrets import scrubbed_stdout
from llem_mlflow.tracking import result_logging
from llem_mlflow.tracking.connection import prepare_mlflow

if TYPE_CHECKING:
    from mlflow.entities import Metric


def log_tracked(tracked: Tracked) -> str:
    """Log a ``track.Tracked`` block into the active MLflow run (a new run named after it when none is).

    Metrics ``track/<name>/duration_s``, ``energy_j``, ``avg_power_w``, ``gpu{i}_j`` (counter, at the
    block's end time) and the power history ``track/<name>/power/gpu{i}_w`` (thinned like a run's; step
    = ms since the block started); tag ``track/<name>/status`` (ok, failed or energy_incomplete) and, when
    energy is not (fully) measured, tag ``track/<name>/energy`` saying why. Returns the run id.
    """
    import mlflow

    prepare_mlflow(mlflow.get_tracking_uri())
    metrics = _tracked_metrics(tracked)
    active = mlflow.active_run()
    run = active or mlflow.start_run(run_name=tracked.name)
    try:
        client = mlflow.tracking.MlflowClient()
        for i in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            client.log_batch(run.info.run_id, metrics=metrics[i : i + 1000])
        tags = {f"track/{tracked.name}/status": tracked.status}
        if tracked.energy_note is not None:
            tags[f"track/{tracked.name}/energy"] = tracked.energy_note[:5000]
        mlflow.set_tags(tags)
    finally:
        if active is None:
            with scrubbed_stdout():  # MLflow prints "View run at <tracking URI>" here
                mlflow.end_run()
    return str(run.info.run_id)


def _tracked_metrics(tracked: Tracked) -> list[Metric]:
    from mlflow.entities import Metric

    prefix, end_ms = f"track/{tracked.name}", int(tracked.end_s * 1000)
    values = {"duration_s": tracked.duration_s, "energy_j": tracked.total_energy_j}
    values["avg_power_w"] = tracked.avg_power_w
    values.update({f"gpu{gpu}_j": joules for gpu, joules in (tracked.energy_j or {}).items()})
    metrics = [Metric(f"{prefix}/{k}", round(v, 6), end_ms, 0) for k, v in values.items() if v is not None]
    if tracked.trace is not None:
        start_ms = int(tracked.start_s * 1000)
        for gpu in tracked.trace.gpus():
            for at_s, power_w in tracked.trace.thinned_power(gpu, result_logging.MAX_POWER_POINTS):
                at_ms = int(at_s * 1000)
                key = f"{prefix}/power/gpu{gpu}_w"
                metrics.append(Metric(key, round(power_w, 3), at_ms, at_ms - start_ms))
    return metrics
