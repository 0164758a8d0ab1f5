"""Rows for ``llem-mlflow compare``: key figures of several results, the settings that differ, and which
differences are not significant. Pure: no MLflow, no matplotlib (the CLI reads runs, ``plots`` draws).

When runs can be compared (``check_comparable``). J per output token is comparable across models, batch
sizes, precisions, prompt lengths, datasets and output lengths: it is always counter energy over generated
tokens. It is not comparable when the runs measured differently, so comparing them is refused (``--force``
overrides):

- a different ``measurement_methodology`` (``total`` counts every batch, ``steady_state`` leaves the ramp
  out, so the same workload gives different joules);
- a different hash recipe (``resolved.recipe``; results older than recipe 2 have none): the settings that
  define a measurement changed between versions, so equal settings may not mean equal measurements;
- a different energy source (``nvml`` or ``none``): a run without energy has nothing to compare.

Intervals. Each figure's 95 % interval follows ``stats`` (docs/methodology.md): none below
``stats.MIN_INTERVAL_N`` (3) cycles, log scale for positive figures (J/token, tok/s), linear for net
J/token. The bounds are recomputed from the per-cycle values stored in each result, so a result written
under an older rule (a linear interval from two cycles, bounds below zero) is shown under today's.

Significance (the ``significance`` column). The best row is the one with the lowest gross J per output
token; it is marked ``best``. Every other row gets a band around its J per output token: its 95 %
interval over the cycles when it has one; otherwise its value +- the run's energy uncertainty per
output token (``uncertainty.gross_j / output_tokens``: window edges plus sensor gain; results without
that block use the counter's edge uncertainty ``energy.edge_uncertainty_j``). The best row gets its band
the same way. When the two bands overlap, the difference is within what the runs can resolve and the row
is marked ``n.s.`` (not significant); when they do not, it is left blank (the difference is real). A row
with no band to compare (no energy) is marked ``?``. The gain part of the uncertainty (5 % by default) is
conservative for two runs on the same board, whose gain error is the same, so one-cycle runs are flagged
``n.s.`` readily: repeat cycles (``cycles: 3``) to resolve small differences.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llem_mlflow.errors import ConfigError
from llem_mlflow.figures import stats
from llem_mlflow.figures.stats import Interval
from llem_mlflow.results.schema import ExperimentResult

#: Settings never shown as "differing": they are where results went, or must be equal anyway.
_NOT_SETTINGS = frozenset({"recipe", "output_dir", "tracking_uri", "experiment_name", "run_name", "mlflow"})
BEST, NOT_SIGNIFICANT, UNKNOWN = "best", "n.s.", "?"


@dataclass(frozen=True)
class Estimate:
    """A figure's value and its 95 % interval over the cycles (both bounds None without an interval)."""

    value: float | None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Row:
    """One run in the comparison; ``settings`` holds only the settings that differ between the runs."""

    label: str
    run_id: str | None
    j_per_token: Estimate
    net_j_per_token: Estimate
    tokens_per_s: Estimate
    ttft_p50_s: float | None
    itl_p50_s: float | None
    energy_j: float | None
    cycles: int
    band: tuple[float, float] | None  # what the significance rule compares (see the module docstring)
    settings: dict[str, Any] = field(default_factory=dict)
    significance: str = ""

    def value_of(self, setting: str) -> Any:
        """The value of a differing setting, or the row's label for ``"run"``."""
        return self.label if setting == "run" else self.settings.get(setting)

    def flat(self) -> dict[str, Any]:
        """One flat dict: the run, the differing settings, then each figure (CSV and JSON rows)."""
        out: dict[str, Any] = {"run": self.label, "run_id": self.run_id, **self.settings}
        for name, fig in (
            ("j_per_output_token", self.j_per_token),
            ("net_j_per_output_token", self.net_j_per_token),
            ("output_tokens_per_s", self.tokens_per_s),
        ):
            out[name], out[f"{name}_ci95_low"], out[f"{name}_ci95_high"] = fig.value, fig.low, fig.high
        out.update(
            ttft_p50_s=self.ttft_p50_s,
            itl_p50_s=self.itl_p50_s,
            energy_j=self.energy_j,
            cycles=self.cycles,
            significance=self.significance,
        )
        return out


@dataclass(frozen=True)
class Comparison:
    """The rows, in the order given, and the names of the settings that differ between them."""

    rows: list[Row]
    differing: list[str]

    def first_field(self) -> str:
        """The setting to plot against: the first that differs, else ``"run"`` (one point per run)."""
        return self.differing[0] if self.differing else "run"


def incomparable_reason(results: Sequence[ExperimentResult]) -> str | None:
    """Why these results must not be compared (one line), or None when they can be."""
    for name, key in _MUST_MATCH.items():
        values = sorted({key(r) for r in results})
        if len(values) > 1:
            return f"the runs differ in {name} ({', '.join(values)}), so their J/token are not comparable"
    return None


def _recipe(r: ExperimentResult) -> str:
    return str(r.resolved.recipe) if r.resolved is not None else "none (before recipe 2)"


#: What must be the same in every run compared (see the module docstring), and how to read it.
_MUST_MATCH: dict[str, Callable[[ExperimentResult], str]] = {
    "measurement_methodology": lambda r: r.measurement_methodology,
    "hash recipe": _recipe,
    "energy source": lambda r: r.energy_source,
}


def check_comparable(results: Sequence[ExperimentResult], *, force: bool) -> None:
    """Raise ConfigError (exit 2) when the results are not comparable, unless ``force``."""
    if len(results) < 2:
        raise ConfigError(f"compare needs at least 2 runs with an llem result, found {len(results)}")
    reason = incomparable_reason(results)
    if reason is not None and not force:
        raise ConfigError(f"{reason}; pass --force to compare them anyway")


def compare(labelled: Sequence[tuple[str, str | None, ExperimentResult]]) -> Comparison:
    """Rows for ``(label, run id, result)`` triples: figures, differing settings, significance flags."""
    all_settings = [settings_of(result) for _, _, result in labelled]
    differing = differing_settings(all_settings)
    rows = [
        _row(label, run_id, result, {k: s.get(k) for k in differing})
        for (label, run_id, result), s in zip(labelled, all_settings, strict=True)
    ]
    return Comparison(rows=flag_significance(rows), differing=differing)


def settings_of(result: ExperimentResult) -> dict[str, Any]:
    """What the run measured (``resolved``, or ``config`` for results before recipe 2) and its GPU."""
    source = result.resolved if result.resolved is not None else result.config
    values = {k: v for k, v in source.model_dump(mode="json").items() if k not in _NOT_SETTINGS}
    gpus = result.environment_snapshot.gpus
    values["gpu_name"] = gpus[0].name if gpus else "none"
    return values


def differing_settings(all_settings: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the settings whose values are not the same in every run, in the settings' order."""
    names: list[str] = []
    for settings in all_settings:
        names += [k for k in settings if k not in names]
    return [k for k in names if len({json.dumps(s.get(k), sort_keys=True) for s in all_settings}) > 1]


def _served_p50(r: ExperimentResult, name: str) -> float | None:
    """A server run's latency p50 (its requests'), where an in-process run's comes from step timings."""
    spread = getattr(r.serving.latency, name) if r.serving is not None else None
    return spread.p50 if spread is not None else None


def _row(label: str, run_id: str | None, r: ExperimentResult, settings: dict[str, Any]) -> Row:
    c, lat = r.cycles, r.latency
    net = r.energy.net_j if r.energy is not None else None
    net_per_token = net / r.output_tokens if net is not None and r.output_tokens else None
    return Row(
        label=label,
        run_id=run_id,
        j_per_token=_figure(r.avg_energy_per_token_j, c.energy_per_output_token_j_ci95 if c else None, True),
        net_j_per_token=_figure(net_per_token, c.net_energy_per_output_token_j_ci95 if c else None, False),
        tokens_per_s=_figure(r.avg_tokens_per_second, c.output_tokens_per_s_ci95 if c else None, True),
        ttft_p50_s=lat.ttft_p50_s if lat else _served_p50(r, "ttft_s"),
        itl_p50_s=lat.itl_p50_s if lat else _served_p50(r, "itl_s"),
        energy_j=r.total_energy_j,
        cycles=c.n if c else 1,
        band=energy_band(r),
        settings=settings,
    )


def _figure(value: float | None, interval: Interval | None, positive: bool) -> Estimate:
    bounds = interval_bounds(interval, positive=positive)
    if value is None or bounds is None:
        return Estimate(value)
    return Estimate(value, *bounds)


def interval_bounds(interval: Interval | None, *, positive: bool) -> tuple[float, float] | None:
    """The 95 % bounds of ``interval`` under today's ``stats`` rules, recomputed from its values."""
    if interval is None:
        return None
    again = stats.summarize(interval.values, positive=positive)
    if again.ci95_low is None or again.ci95_high is None:
        return None
    return again.ci95_low, again.ci95_high


def energy_band(r: ExperimentResult) -> tuple[float, float] | None:
    """The J/output-token band the significance rule compares (see the module docstring), or None."""
    interval = r.cycles.energy_per_output_token_j_ci95 if r.cycles else None
    bounds = interval_bounds(interval, positive=True) if r.avg_energy_per_token_j is not None else None
    if bounds is not None:
        return bounds
    value = r.avg_energy_per_token_j
    if value is None or not r.output_tokens:
        return None
    bound = r.uncertainty.gross_j if r.uncertainty is not None else None
    if bound is None and r.energy is not None:
        bound = r.energy.edge_uncertainty_j
    if bound is None:
        return None
    half = bound / r.output_tokens
    return value - half, value + half


def flag_significance(rows: Sequence[Row]) -> list[Row]:
    """Mark the best row (lowest gross J/token) ``best`` and every other ``n.s.``, ``?`` or blank."""
    measured = [row for row in rows if row.j_per_token.value is not None]
    if not measured:
        return [_with(row, UNKNOWN) for row in rows]
    best = min(measured, key=lambda row: row.j_per_token.value or 0.0)
    return [_with(row, BEST if row is best else _flag(row, best)) for row in rows]


def _flag(row: Row, best: Row) -> str:
    if row.band is None or best.band is None:
        return UNKNOWN
    overlap = row.band[0] <= best.band[1] and best.band[0] <= row.band[1]
    return NOT_SIGNIFICANT if overlap else ""


def _with(row: Row, significance: str) -> Row:
    return replace(row, significance=significance)
