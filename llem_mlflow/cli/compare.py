"""``llem-mlflow compare``: the key figures of several MLflow runs side by side, with intervals.

Which runs: the run ids given, else the children of ``--parent`` (a sweep's parent run), else every
FINISHED run of the experiment (``--experiment-name``, default as for ``run``) that holds an llem result
(tag ``llem.experiment_id``). Each run's ``result.json`` artifact is read back; ``compare`` builds the
rows (figures, the settings that differ, ``n.s.`` where a difference is within the runs' intervals) and
refuses runs that measured differently unless ``--force``. Errors map to exit codes through ``exits``:
2 the request must change (one line), 1 the store or a file failed.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from llem_mlflow.cli.console import with_interval
from llem_mlflow.cli.exits import FAILED, INVALID, fail
from llem_mlflow.errors import ConfigError, LlemError
from llem_mlflow.figures.stats import MIN_INTERVAL_N
from llem_mlflow.results.compare import Comparison, Estimate, Row, check_comparable, incomparable_reason

Opt = typer.Option


def compare(
    run_ids: Annotated[
        list[str] | None, typer.Argument(help="Run ids to compare (default: the experiment's runs).")
    ] = None,
    experiment_name: Annotated[
        str | None, Opt(metavar="TEXT", help="MLflow experiment whose llem runs to compare.")
    ] = None,
    tracking_uri: Annotated[str | None, Opt(metavar="TEXT", help="MLflow tracking URI.")] = None,
    parent: Annotated[
        str | None, Opt(metavar="RUN_ID", help="Compare the child runs of this (sweep) parent run.")
    ] = None,
    csv_path: Annotated[str | None, Opt("--csv", metavar="FILE", help="Also write the rows as CSV.")] = None,
    json_path: Annotated[
        str | None, Opt("--json", metavar="FILE", help="Also write the rows as JSON.")
    ] = None,
    figure: Annotated[
        str | None,
        Opt(metavar="FILE.png", help="Plot J/token and tok/s against the first differing setting."),
    ] = None,
    force: Annotated[
        bool, Opt("--force", help="Compare even runs whose methodology, hash recipe or energy source differ.")
    ] = False,
    baseline: Annotated[
        str | None,
        Opt(metavar="RUN|TAG=VALUE", help="Gate: the baseline run (id, or the newest run with this tag)."),
    ] = None,
    fail_if_worse: Annotated[
        float | None,
        Opt(metavar="PCT", help="Gate: exit 1 when the candidate is worse by more than PCT % (95 %)."),
    ] = None,
    metric: Annotated[
        str, Opt(metavar="NAME", help="Gate: the per-cycle metric judged.")
    ] = "energy/per_output_token_j",
    markdown: Annotated[
        str | None, Opt(metavar="FILE", help="Gate: append the verdict as Markdown (a CI job summary).")
    ] = None,
    max_itl_ms: Annotated[
        float | None, Opt(metavar="MS", help="Name the lowest-J/token run whose ITL p50 is at most MS.")
    ] = None,
    max_ttft_ms: Annotated[
        float | None, Opt(metavar="MS", help="Name the lowest-J/token run whose TTFT p50 is at most MS.")
    ] = None,
) -> None:
    """Compare llem runs: J/token and tok/s with 95% intervals, the settings that differ, n.s. flags.

    With --baseline and --fail-if-worse: the regression gate (exit 0 pass, 1 worse, 3 cannot compare).
    """
    if baseline is not None or fail_if_worse is not None:
        _gate(run_ids or [], baseline, fail_if_worse, metric, experiment_name, tracking_uri, markdown)
    try:
        comparison = _compare(run_ids or [], experiment_name, tracking_uri, parent, force)
        typer.echo(render_table(comparison))
        for line in best_under_lines(comparison, itl_ms=max_itl_ms, ttft_ms=max_ttft_ms):
            typer.echo(line)
        _write_outputs(comparison, csv_path, json_path, figure)
    except ConfigError as exc:
        fail(str(exc), INVALID)
    except LlemError as exc:
        fail(str(exc), FAILED)


def _gate(
    run_ids: list[str],
    baseline: str | None,
    worse_pct: float | None,
    metric: str,
    experiment_name: str | None,
    tracking_uri: str | None,
    markdown: str | None,
) -> None:
    from llem_mlflow.cli.gate_cmd import gate

    if baseline is None or worse_pct is None:
        fail("the gate needs both --baseline and --fail-if-worse PCT", INVALID)
    gate(
        run_ids,
        baseline=baseline,
        worse_pct=worse_pct,
        metric=metric,
        experiment_name=experiment_name,
        tracking_uri=tracking_uri,
        markdown=markdown,
    )


def _compare(
    run_ids: list[str], experiment_name: str | None, tracking_uri: str | None, parent: str | None, force: bool
) -> Comparison:
    from llem_mlflow.results.compare import compare as build
    from llem_mlflow.tracking.stored_results import read_results

    stored = read_results(
        tracking_uri or None, run_ids=run_ids, experiment_name=experiment_name or None, parent=parent or None
    )
    results = [s.result for s in stored]
    check_comparable(results, force=force)
    reason = incomparable_reason(results)
    if reason is not None:
        typer.echo(f"warning: {reason}; compared anyway (--force)", err=True)
    names = Counter(s.run_name for s in stored)
    labels = [s.run_name if names[s.run_name] == 1 else f"{s.run_name} ({s.run_id[:8]})" for s in stored]
    return build([(label, s.run_id, s.result) for label, s in zip(labels, stored, strict=True)])


# ---------------------------------------------------------------- best under a latency target


def best_under_lines(comparison: Comparison, *, itl_ms: float | None, ttft_ms: float | None) -> list[str]:
    """For each target given: the run with the lowest J/output token whose latency p50 meets it."""
    from llem_mlflow.figures import pareto

    out = []
    for name, limit_ms, field in (("ITL p50", itl_ms, "itl_p50_s"), ("TTFT p50", ttft_ms, "ttft_p50_s")):
        if limit_ms is None:
            continue
        if not limit_ms > 0:
            raise ConfigError(f"--max-{name.split()[0].lower()}-ms must be a positive number of ms")
        points = [
            pareto.FrontPoint(row.label, row.j_per_token.value, latency, None, row.run_id)
            for row in comparison.rows
            if row.j_per_token.value is not None and (latency := getattr(row, field)) is not None
        ]
        best = pareto.best_under(points, limit_ms / 1000)
        head = f"best under {name} <= {limit_ms:g} ms:"
        if best is None:
            out.append(f"{head} no run meets it ({len(points)} with both figures)")
        else:
            ms = best.latency * 1000
            out.append(f"{head} {best.label} ({best.key}): {best.energy:.4g} J/token, {name} {ms:.1f} ms")
    return out


# ---------------------------------------------------------------- the table


def render_table(comparison: Comparison) -> str:
    """The rows as a rich table (plain text, no colour), followed by what the marks mean.

    At most ``MAX_SETTING_COLUMNS`` differing settings get a column; the note names the rest
    (every one is in ``--csv`` and ``--json``).
    """
    from rich.console import Console
    from rich.table import Table

    shown = comparison.differing[:MAX_SETTING_COLUMNS]
    table = Table(show_edge=False, header_style="bold")
    table.add_column("run", overflow="fold")
    for name in shown:
        table.add_column(name, overflow="fold", max_width=40)
    for name in _FIGURE_HEADERS:
        table.add_column(name, justify="right", no_wrap=True)
    for row in comparison.rows:
        table.add_row(row.label, *(_text(row.settings.get(k)) for k in shown), *_cells(row))
    console = Console(width=_width(), no_color=True, force_terminal=False, highlight=False)
    with console.capture() as capture:
        console.print(table)
    notes = [
        f"J/token: gross, [95% interval over cycles, from {MIN_INTERVAL_N} cycles on]; "
        "vs best: n.s. = within the runs' intervals"
    ]
    hidden = comparison.differing[MAX_SETTING_COLUMNS:]
    if hidden:
        notes.append(f"also differ (see --csv/--json): {', '.join(hidden)}")
    return capture.get().rstrip() + "\n" + "\n".join(notes)


#: Differing settings shown as table columns; the rest are named below the table.
MAX_SETTING_COLUMNS = 4
_FIGURE_HEADERS = ("J/token", "net J/token", "tok/s", "TTFT p50", "ITL p50", "energy", "cycles", "vs best")


def _cells(row: Row) -> list[str]:
    return [
        _estimate(row.j_per_token, 4),
        _estimate(row.net_j_per_token, 4),
        _estimate(row.tokens_per_s, 3),
        _ms(row.ttft_p50_s),
        _ms(row.itl_p50_s),
        f"{row.energy_j:,.1f} J" if row.energy_j is not None else "-",
        str(row.cycles),
        row.significance,
    ]


def _estimate(e: Estimate, digits: int) -> str:
    """``value [low, high]`` to ``digits`` significant figures (tok/s 0.93 is ``0.930``, not ``1``)."""
    return "-" if e.value is None else with_interval(e.value, e.low, e.high, digits)


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds is not None else "-"


def _text(value: Any) -> str:
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value)


def _width() -> int:
    import shutil

    # Not a terminal (a file, a pipe): the table's natural width, never squeezed into ellipses.
    return shutil.get_terminal_size((200, 24)).columns if sys.stdout.isatty() else 1000


# ---------------------------------------------------------------- files


def _write_outputs(
    comparison: Comparison, csv_path: str | None, json_path: str | None, figure: str | None
) -> None:
    if csv_path:
        _guard(csv_path, lambda p: write_csv(comparison, p))
    if json_path:
        _guard(json_path, lambda p: write_json(comparison, p))
    if figure:
        from llem_mlflow.results.plots import compare_figure

        _guard(figure, lambda p: compare_figure(comparison.rows, comparison.first_field(), p))


def _guard(path: str, write: Callable[[Path], object]) -> None:
    try:
        write(Path(path))
    except OSError as exc:
        raise LlemError(f"cannot write {path}: {exc.strerror or exc}; check the folder exists") from None
    typer.echo(f"wrote {path}", err=True)


def write_csv(comparison: Comparison, path: Path) -> None:
    """One line per run: the run, the differing settings, each figure and its interval, the n.s. mark."""
    from llem_mlflow.results.files import write_text_atomic

    rows = [row.flat() for row in comparison.rows]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
    write_text_atomic(path, buffer.getvalue())


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, dict | list | bool) else value


def write_json(comparison: Comparison, path: Path) -> None:
    """``{"differing": [setting, ...], "rows": [the CSV's rows as objects]}``."""
    data = {"differing": comparison.differing, "rows": [row.flat() for row in comparison.rows]}
    from llem_mlflow.results.files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
