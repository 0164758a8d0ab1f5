"""The ``llem-mlflow`` command line: the typer app, its commands, and ``main``, the console entry point.

Each command lives in its own module (``run_cmd``, ``sweep_cmd``, ``compare``, ``log_cmd``,
``config_cmd``); this module registers them, in the order ``--help`` lists them. How errors become exit
codes (0 ok, 2 invalid configuration, 1 runtime failure, 130 interrupted) is ``exits``'s.
"""

from __future__ import annotations

import gc
import sys
import traceback
from typing import Annotated

import typer

from llem_mlflow._version import __version__
from llem_mlflow.cli import compare, config_cmd, log_cmd, run_cmd, sweep_cmd
from llem_mlflow.cli.options import Command, Group, dashes
from llem_mlflow.cli.run_cmd import _Process
from llem_mlflow.cli.summary import stages_line, summary
from llem_mlflow.secrets import scrub_secrets

#: ``summary`` and ``stages_line`` (the text a run prints) stay importable here, where they were.
__all__ = ["app", "main", "stages_line", "summary"]

app = typer.Typer(
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # `mlflow run -P batch_size=2` passes `--batch_size 2`: option names accept _ for -.
    context_settings={"help_option_names": ["-h", "--help"], "token_normalize_func": dashes},
    help="Measure the GPU energy of LLM inference in-process and log it to MLflow.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llem-mlflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Measure the GPU energy of LLM inference in-process and log it to MLflow."""


app.command("run", cls=Command)(run_cmd.run)
app.command("sweep", cls=Command)(sweep_cmd.sweep_points)
app.command("compare", cls=Command)(compare.compare)
app.command("log", cls=Command)(log_cmd.log_saved)
app.command("sync", cls=Command)(log_cmd.sync_spool)
app.command("config", cls=Command)(config_cmd.show_config)


def main() -> None:
    """Console-script entry point; the process ends without CPython's final garbage collections.

    After a run the heap holds millions of objects (torch, transformers, MLflow). On exit CPython
    walks them in full collections while it tears modules down: 2-6 s of nothing after the summary.
    ``gc.freeze()`` moves them out of the collector's reach first. Nothing is skipped that holds data:
    atexit handlers run, open files are flushed and closed, result files were fsync'ed when written,
    and MLflow was called synchronously (its async logging is not used).
    """
    from llem_mlflow.interrupts import graceful

    _Process.is_cli = True
    try:
        with graceful():  # SIGTERM = Ctrl-C; a second one exits at once
            app()
    except Exception as exc:  # a bug's traceback, without the credentials its text may hold
        sys.stderr.write(scrub_secrets("".join(traceback.format_exception(exc))))
        raise SystemExit(1) from None
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
