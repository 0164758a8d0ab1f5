"""llem-mlflow: measure the GPU energy of LLM inference in-process and log it to MLflow.

Importing the package is cheap: torch, transformers, pynvml, mlflow and pyarrow are
imported only when an experiment runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llem_mlflow._version import __version__
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.result import ExperimentResult

if TYPE_CHECKING:
    from llem_mlflow.runner import run_experiment

__all__ = ["ExperimentConfig", "ExperimentResult", "__version__", "run_experiment"]


def __getattr__(name: str) -> Any:
    if name == "run_experiment":
        from llem_mlflow.runner import run_experiment

        return run_experiment
    raise AttributeError(f"module 'llem_mlflow' has no attribute {name!r}")
