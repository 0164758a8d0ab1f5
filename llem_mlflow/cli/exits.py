"""How a command ends: its one ``error:`` line on stderr (secrets scrubbed) and its exit code.

The one place a project error becomes an exit code: 0 ok, 2 the request must change (``ConfigError``:
an invalid configuration or option, one line naming it), 1 a runtime failure (any other ``LlemError``),
130 interrupted (``interrupts.EXIT_CODE``). Every command reports and exits through these helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from llem_mlflow.errors import ConfigError, LlemError
from llem_mlflow.secrets import scrub_secrets

#: The request must change: a bad config value, option or file named on the command line.
INVALID = 2
#: The work failed: the store, a file, the hardware.
FAILED = 1


def err(message: str) -> None:
    """``error: <message>`` on stderr, credentials scrubbed."""
    typer.echo(f"error: {scrub_secrets(message)}", err=True)


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as the error line and end the command with ``code``."""
    err(message)
    raise typer.Exit(code) from None


@contextmanager
def exit_codes() -> Iterator[None]:
    """A project error as its one line and exit code: ConfigError 2, any other LlemError 1."""
    try:
        yield
    except ConfigError as exc:
        fail(str(exc), INVALID)
    except LlemError as exc:
        fail(str(exc), FAILED)


def stopped(message: str, kill_mlflow_run: bool) -> NoReturn:
    """One line saying what an interrupted run kept; the ``mlflow run`` run ends KILLED; exit 130."""
    from llem_mlflow import interrupts
    from llem_mlflow.tracking.run_endings import end_env_run

    err(message)
    if kill_mlflow_run:
        end_env_run("KILLED")
    raise typer.Exit(interrupts.EXIT_CODE)
