"""``llem-mlflow run``: one experiment; and how a command line becomes a config (``config``, ``sweep``).

``run`` takes the YAML file (argument or ``--config``), one option per config field (generated from
``ExperimentConfig``, see ``options``) and ``--no-mlflow``; ``load`` turns them into the config or ends
with exit 2 and one line ``error: invalid config: <field>: ...``. The run's summary goes to stdout,
its progress and errors to stderr.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llem_mlflow.cli import options
from llem_mlflow.cli.console import ConsoleProgress, setup_logging
from llem_mlflow.cli.exits import FAILED, INVALID, err, exit_codes, fail, stopped
from llem_mlflow.cli.summary import summary
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.errors import ConfigError, RunInterrupted


def _config_file(
    config: Annotated[
        str | None, typer.Argument(metavar="CONFIG.yaml", help="YAML config file (flags override it).")
    ] = None,
    config_file: Annotated[
        str | None,
        typer.Option(
            "--config", metavar="CONFIG.yaml", help="The YAML config file, as an option (`mlflow run`)."
        ),
    ] = None,
) -> None:
    """The config file, as the argument or ``--config``."""


def _mlflow_switch(
    no_mlflow: Annotated[
        bool, typer.Option("--no-mlflow", help="Write files only; do not log to MLflow.")
    ] = False,
) -> None:
    """``mlflow: false`` as a flag."""


#: ``run``'s parameters (and ``config``'s): the file, an option per config field, ``--no-mlflow``.
RUN_OPTIONS = [
    *options.params_of(_config_file),
    *options.config_options(),
    *options.params_of(_mlflow_switch),
]


@options.with_params(RUN_OPTIONS)
def run(**flags: Any) -> None:
    """Run one experiment: load the model, measure, write result.json + trace, log to MLflow."""
    cfg = load(flags)
    _execute(cfg)


def load(flags: dict[str, Any]) -> ExperimentConfig:
    """The config from the YAML path and flags of ``run``/``config``; invalid: exit 2 with one line."""
    try:
        return load_config(config_path(flags.get("config"), flags.get("config_file")), **overrides(flags))
    except ConfigError as exc:
        fail(str(exc), INVALID)


def overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """The config fields among ``run``'s flags (None: unset; ``--no-mlflow``: ``mlflow=False``)."""
    not_fields = ("config", "config_file", "no_mlflow", "gpus")
    fields = {k: (None if v == "" else v) for k, v in flags.items() if k not in not_fields}
    if flags.get("no_mlflow"):
        fields["mlflow"] = False
    return fields


def config_path(argument: str | None, option: str | None) -> str | None:
    """The config file given as the argument or ``--config`` (the same one twice is fine)."""
    if argument and option and argument != option:
        raise ConfigError(f"two config files given ({argument} and --config {option}); give one")
    return argument or option or None


class _Process:
    """``is_cli``: ``main()`` runs, so the process's age when a run starts is its startup time."""

    is_cli = False


def _execute(cfg: ExperimentConfig) -> None:
    from llem_mlflow.interrupts import EXIT_CODE, holding
    from llem_mlflow.measure.timings import process_age_s
    from llem_mlflow.run.execute import execute

    startup_s = process_age_s() if _Process.is_cli else None
    setup_logging()
    outcome = None
    with exit_codes():
        try:
            with ConsoleProgress() as progress:
                outcome = execute(cfg, progress=progress, startup_s=startup_s)
        except RunInterrupted as exc:
            stopped(str(exc), exc.outcome is None)
        except KeyboardInterrupt:
            if outcome is None:  # after it, the run was whole and kept: the summary follows
                stopped("interrupted before measuring began: nothing was measured, nothing kept", True)
    assert outcome is not None
    with holding() as held:  # a signal now waits for the summary and the last line
        typer.echo(summary(outcome))
        if outcome.write_error:  # the result folder could not hold the files: what was kept where
            err(outcome.write_error)
        if outcome.tracking_error:
            err(outcome.tracking_error)
    if outcome.write_error or outcome.tracking_error:
        raise typer.Exit(FAILED)
    if held.signal:
        raise typer.Exit(EXIT_CODE)
