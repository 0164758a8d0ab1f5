"""``llem-mlflow log`` and ``sync``: results measured earlier, logged to MLflow now.

``log`` logs one saved result folder (e.g. after the tracking server was unreachable); ``sync`` uploads
what a run spooled when MLflow was unreachable, each entry once, to the store it was meant for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llem_mlflow.cli.console import line, setup_logging
from llem_mlflow.cli.exits import FAILED, INVALID, err, fail
from llem_mlflow.cli.options import dashes
from llem_mlflow.errors import LlemError


def log_saved(
    result_dir: Annotated[str, typer.Argument(help="A result folder (holds result.json and the trace).")],
    tracking_uri: Annotated[str | None, typer.Option(metavar="TEXT", help="MLflow tracking URI.")] = None,
    experiment_name: Annotated[
        str | None, typer.Option(metavar="TEXT", help="MLflow experiment name.")
    ] = None,
    run_name: Annotated[str | None, typer.Option(metavar="TEXT", help="MLflow run name.")] = None,
) -> None:
    """Log a saved result folder to MLflow (e.g. after the tracking server was unreachable)."""
    from llem_mlflow.tracking.recording import log_folder

    setup_logging()
    _check_names(tracking_uri=tracking_uri, experiment_name=experiment_name, run_name=run_name)
    try:
        logged = log_folder(Path(result_dir), tracking_uri or None, experiment_name or None, run_name or None)
    except LlemError as exc:
        fail(str(exc), FAILED)
    if logged.already_logged:
        typer.echo(f"[llem] already logged in MLflow run {logged.run_id}: nothing logged again", err=True)
    typer.echo(line("mlflow run", logged.run_id))


def sync_spool(
    entries: Annotated[
        list[str] | None, typer.Argument(help="Spool entries (folders or ids); default: every entry.")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(metavar="TEXT", help="Log to this store instead of each entry's own.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be logged; log nothing.")
    ] = False,
    experiment_name: Annotated[
        str | None,
        typer.Option(
            metavar="TEXT", help="Log into this MLflow experiment, not the name saved with each entry."
        ),
    ] = None,
) -> None:
    """Upload results spooled when MLflow was unreachable, each once, to the store it was meant for.

    The spool is LLEM_MLFLOW_SPOOL_DIR, else ~/.local/state/llem-mlflow/spool. It holds no credentials:
    they come from --tracking-uri, from MLFLOW_TRACKING_URI when it names the same store (a database
    password), or from the environment (MLFLOW_TRACKING_USERNAME / PASSWORD / TOKEN, PGPASSWORD).
    """
    from llem_mlflow.tracking import spool

    setup_logging()
    _check_names(tracking_uri=tracking_uri, experiment_name=experiment_name)
    try:
        chosen, skipped = _spool_entries(entries)
    except LlemError as exc:
        fail(str(exc), INVALID)
    for bad in skipped:
        err(f"{bad.reason}; skipped (move it out of the spool)")
    if not chosen:
        typer.echo(f"[llem] nothing spooled in {spool.spool_dir()}", err=True)
    rows = spool.sync(chosen, tracking_uri or None, dry_run, experiment_name=experiment_name or None)
    for row in rows:
        where = f" run {row.run_id}" if row.run_id else ""
        note = f" ({row.note})" if row.note else ""
        at = f" at {row.tracking_uri}" if row.tracking_uri else ""  # busy/gone rows have no store
        typer.echo(f"{row.entry.llem_id}  {row.status}{where}{at}{note}")
    if skipped or any(r.status == "failed" for r in rows):
        raise typer.Exit(FAILED)  # busy and gone: another sync has them


def _check_names(**options: str | None) -> None:
    """``log``/``sync`` options that name a store, experiment or run fit what MLflow takes (the config's
    limits); else exit 2 with one line naming the option and the limit."""
    from llem_mlflow.config import TEXT_LIMITS

    for name, value in options.items():
        problem = TEXT_LIMITS[name].problem(value) if value else None
        if problem:
            fail(f"--{dashes(name)}: {problem}", INVALID)


def _spool_entries(names: list[str] | None) -> tuple[list[Any], list[Any]]:
    """The entries to sync (those named, else every sound one) and the spool's bad entries, skipped."""
    from llem_mlflow.tracking import spool

    return (spool.named(names), []) if names else spool.scan()
