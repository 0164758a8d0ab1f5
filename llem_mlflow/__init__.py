"""llem-mlflow: measure the GPU energy of LLM inference in-process and log it to MLflow.

Importing the package is cheap: its public names (``run_experiment``, ``run_sweep``,
``ExperimentConfig``, ``ExperimentResult``) are imported on first use (PEP 562), so
``import llem_mlflow`` loads neither pydantic nor torch, transformers, pynvml, mlflow or pyarrow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llem_mlflow._version import __version__

if TYPE_CHECKING:
    from llem_mlflow.config import ExperimentConfig
    from llem_mlflow.results.schema import ExperimentResult
    from llem_mlflow.run.execute import run_experiment
    from llem_mlflow.run.track import track
    from llem_mlflow.sweep.execute import run_sweep

__all__ = ["track", "ExperimentConfig", "ExperimentResult", "__version__", "run_experiment", "run_sweep"]

_LAZY = {
    "ExperimentConfig": "llem_mlflow.config",
    "ExperimentResult": "llem_mlflow.results.schema",
    "run_experiment": "llem_mlflow.run.execute",
    "run_sweep": "llem_mlflow.sweep.execute",
    "track": "llem_mlflow.run.track",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'llem_mlflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
