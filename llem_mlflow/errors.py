"""The package's one error tree; only the CLI turns these into exit codes.

``ConfigError`` means the user asked for something invalid (exit 2); every other
``LlemError`` is a runtime failure (exit 1). Messages say what failed and what to do, and never hold
a credential: every message goes through ``secrets.scrub_secrets`` when the error is made.
"""

from __future__ import annotations

from llem_mlflow.secrets import scrub_secrets


class LlemError(Exception):
    """Base class of every error llem-mlflow raises on purpose; its message is scrubbed of credentials."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(scrub_secrets(a) if isinstance(a, str) else a for a in args))


class ConfigError(LlemError):
    """The configuration (file, flags or overrides) is invalid."""


class DeviceError(LlemError):
    """The GPU or its management library (NVML) failed or is misconfigured."""


class BackendError(LlemError):
    """The model could not be loaded or run."""


class OutOfMemoryError(BackendError):
    """Generating ran out of GPU (or host) memory; the message names the batch and what to lower.

    A runtime failure (exit 1): the same config may fit on a larger GPU. By the time it is raised the
    failed call's memory has been returned (``backends.runtime.free_memory``).
    """


class TrackingError(LlemError):
    """MLflow logging or result writing failed."""


class RunInterrupted(LlemError):
    """Ctrl-C or SIGTERM ended a run; the message says what was kept (the CLI exits 130).

    ``outcome``: the run's files and MLflow run when cycles had completed (a ``runner.Outcome``), else None.
    """

    def __init__(self, message: str, outcome: object = None) -> None:
        super().__init__(message)
        self.outcome = outcome
