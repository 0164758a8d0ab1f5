"""The package's one error tree; only the CLI turns these into exit codes.

``ConfigError`` means the user asked for something invalid (exit 2); every other
``LlemError`` is a runtime failure (exit 1). Messages say what failed and what to do.
"""

from __future__ import annotations


class LlemError(Exception):
    """Base class of every error llem-mlflow raises on purpose."""


class ConfigError(LlemError):
    """The configuration (file, flags or overrides) is invalid."""


class DeviceError(LlemError):
    """The GPU or its management library (NVML) failed or is misconfigured."""


class BackendError(LlemError):
    """The model could not be loaded or run."""


class TrackingError(LlemError):
    """MLflow logging or result writing failed."""
