"""Logging a result folder (result.json + timeseries.parquet) to MLflow.

Used right after a run and by ``llem-mlflow log DIR`` to recover a folder whose logging failed.
The files are always written before this is called, so a failure here never loses a measurement.
"""

from __future__ import annotations

from pathlib import Path

from llem_mlflow import artifacts
from llem_mlflow.errors import TrackingError
from llem_mlflow.result import ExperimentResult
from llem_mlflow.trace import PowerTrace


def log_folder(
    folder: Path,
    tracking_uri: str | None,
    experiment_name: str | None,
    run_name: str | None,
    loaded: tuple[ExperimentResult, PowerTrace] | None = None,
) -> str:
    """Log a result folder (result.json + trace) to MLflow; returns the run id.

    Raises:
        TrackingError: logging failed; the message says the files are safe in ``folder``.
    """
    from llem_mlflow import tracking

    json_path, trace_path = folder / artifacts.RESULT_FILE, folder / artifacts.TRACE_FILE
    result, trace = loaded or (
        artifacts.read_result_json(json_path),
        artifacts.read_trace_parquet(trace_path),
    )
    try:
        return tracking.log_result(
            result,
            [json_path, trace_path],
            trace,
            tracking_uri=tracking_uri,
            experiment_name=experiment_name,
            run_name=run_name,
        )
    except TrackingError as exc:
        raise TrackingError(
            f"{exc}\nThe result is saved in {folder}; log it later with: llem-mlflow log {folder}"
        ) from None
