"""``llem-mlflow sweep``: each point of a sweep file measured, one MLflow parent run, a child per point.

Takes ``run``'s options (they override the sweep's base config) plus ``--gpus`` (one worker process per
GPU). One line per point as it settles on stderr; the table of points, the summary folder and the
parent run on stdout.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from llem_mlflow.cli import options
from llem_mlflow.cli.console import ConsoleProgress, line, setup_logging
from llem_mlflow.cli.exits import FAILED, INVALID, exit_codes, fail, stopped
from llem_mlflow.cli.run_cmd import RUN_OPTIONS, config_path, overrides
from llem_mlflow.errors import ConfigError, RunInterrupted


def _sweep_only(
    gpus: Annotated[
        str | None,
        typer.Option(
            metavar="0,1",
            help="Run points in parallel, one worker process per GPU (indices as nvidia-smi shows them); "
            "each worker sees and measures only its GPU.",
        ),
    ] = None,
) -> None:
    """The options ``sweep`` has beyond ``run``'s."""


@options.with_params([*RUN_OPTIONS, *options.params_of(_sweep_only)])
def sweep_points(**flags: Any) -> None:
    """Measure each point of a sweep file: one MLflow parent run, a nested child run per point.

    The file holds the usual config fields plus `sweep:` (field: list of values, or a list of variants).

    Flags override the base config. Running the same sweep again measures only what is not FINISHED.
    """
    from llem_mlflow.sweep.execute import load_sweep
    from llem_mlflow.sweep.parallel import check_points, resolve_gpus

    try:
        path = config_path(flags.get("config"), flags.get("config_file"))
        if not path:
            raise ConfigError("sweep needs a sweep file: llem-mlflow sweep FILE.yaml")
        plan = load_sweep(path, **overrides(flags))
        gpus = resolve_gpus(flags["gpus"]) if flags.get("gpus") else ()
        if gpus:
            check_points(plan.points)
    except ConfigError as exc:
        fail(str(exc), INVALID)
    _run_sweep(plan, gpus)


def _run_sweep(plan: Any, gpus: tuple[str, ...] = ()) -> None:
    from llem_mlflow.sweep.execute import Parts, markdown_table, run_sweep

    setup_logging()
    where = f" on GPUs {','.join(gpus)}, one worker each" if gpus else ""
    typer.echo(
        f"[llem] sweep {plan.sweep_id}: {len(plan.points)} points over {', '.join(plan.fields)}{where}",
        err=True,
    )
    with exit_codes():
        try:
            with ConsoleProgress() as progress:
                parts = Parts(progress=None if gpus else progress, report=_report_point, gpu_ids=gpus)
                outcome = run_sweep(plan, parts)
        except RunInterrupted as exc:
            stopped(f"{exc}; the sweep stopped (run it again to measure the rest)", False)
        except KeyboardInterrupt:
            stopped("interrupted: the sweep stopped (run it again to measure the rest)", False)
    typer.echo(markdown_table(outcome.rows))
    typer.echo(line("summary", str(outcome.summary_files[0].parent)))
    typer.echo(line("mlflow parent", outcome.parent_run_id or "not logged (--no-mlflow)"))
    if outcome.failed:
        fail(f"{len(outcome.failed)} point(s) failed; run the same sweep again to measure only those", FAILED)


def _report_point(row: Any) -> None:
    """One line per point as it is settled (stderr, beside the progress display)."""
    run = f"  run {row.run_id}" if row.run_id else ""
    note = f"  ({row.note})" if row.status in ("invalid", "failed", "not logged") else ""
    typer.echo(f"[llem] point {row.point.label}: {row.status}{run}{note}", err=True)
