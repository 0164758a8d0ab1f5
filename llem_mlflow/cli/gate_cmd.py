"""``llem-mlflow compare --baseline RUN|TAG=VALUE --fail-if-worse PCT``: the regression gate.

The candidate is the one run id given, else the newest finished llem run of the experiment; the baseline
is a run id, or the newest finished run tagged ``TAG=VALUE`` (e.g. ``llem.git.commit=<sha>``). The
decision is ``results.gate.decide`` (Welch's t on the per-cycle values' logarithms, one-sided 95 %).
Exit codes (the gate's own, for CI): 0 not worse by more than PCT, 1 worse, 3 cannot be compared; a
request that must change is 2 and a store that fails is 1, as for every command.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from llem_mlflow.cli.exits import FAILED, INVALID, fail
from llem_mlflow.errors import ConfigError, LlemError

if TYPE_CHECKING:
    from llem_mlflow.results.gate import GateDecision

#: An MLflow run id (32 hex digits); anything else with ``=`` is a tag.
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def gate(
    run_ids: list[str],
    *,
    baseline: str,
    worse_pct: float,
    metric: str,
    experiment_name: str | None,
    tracking_uri: str | None,
    markdown: str | None,
) -> None:
    """Decide, print the one line (and the Markdown to ``markdown``), exit with the gate's code."""
    try:
        decision = _decide(run_ids, baseline, worse_pct, metric, experiment_name, tracking_uri)
    except ConfigError as exc:
        fail(str(exc), INVALID)
    except LlemError as exc:
        fail(str(exc), FAILED)
    typer.echo(decision.line)
    if markdown:
        try:
            with Path(markdown).open("a", encoding="utf-8") as out:
                out.write(decision.markdown + "\n")
        except OSError as exc:
            fail(f"cannot write {markdown}: {exc.strerror or exc}", FAILED)
    raise typer.Exit(decision.code)


def _decide(
    run_ids: list[str],
    baseline: str,
    worse_pct: float,
    metric: str,
    experiment_name: str | None,
    tracking_uri: str | None,
) -> GateDecision:
    from llem_mlflow.results.gate import decide
    from llem_mlflow.tracking.stored_results import newest_run_id, read_results

    if len(run_ids) > 1:
        raise ConfigError("the gate compares one candidate run with --baseline: give at most one run id")
    base_id = _baseline_id(baseline) or newest_run_id(tracking_uri, experiment_name, _tag(baseline))
    candidate_id = run_ids[0] if run_ids else newest_run_id(tracking_uri, experiment_name, None)
    if candidate_id == base_id:
        raise ConfigError(f"the candidate and the baseline are the same run ({base_id}): name another")
    base, candidate = read_results(tracking_uri, run_ids=[base_id, candidate_id])
    try:
        return decide(base.result, candidate.result, worse_pct=worse_pct, metric=metric)
    except ValueError as exc:
        raise ConfigError(f"--fail-if-worse: {exc}") from None


def _baseline_id(baseline: str) -> str | None:
    """``baseline`` when it is a run id, else None (it is a tag)."""
    return baseline if _RUN_ID.match(baseline) else None


def _tag(baseline: str) -> tuple[str, str]:
    key, sep, value = baseline.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ConfigError(f"--baseline {baseline!r}: give a run id or TAG=VALUE (e.g. llem.git.commit=<sha>)")
    return key.strip(), value.strip()
