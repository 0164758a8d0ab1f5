"""PNG figures: a run's power over time (``power.png``) and a comparison of runs (``compare``).

The only module that imports matplotlib, lazily, inside functions: it draws on a ``Figure`` with the
Agg canvas (no pyplot, no display, no global state), so it works headless and from any thread.

``power_figure`` draws one line per GPU (seconds from the measured window's start), shades each cycle's
measured window (and the idle baseline and idle-after windows, lighter), and marks each GPU's idle
level (a dashed line at ``energy.per_gpu[i].idle_power_w``, in that GPU's colour: per GPU, because the
lines are per GPU). Prefill and decode are not drawn as spans: result.json keeps their energy, not
their times, so their joules go in the subtitle. A run without a power trace (CPU, no NVML) gets no
figure: ``power_figure`` writes nothing and returns None, so a run's artifacts never hold an empty chart.

``draw_compare`` (``compare --figure`` and a sweep's ``compare.png``) plots J/output token and output tok/s
against a setting, or, when no run measured energy (CPU), output tok/s, TTFT p50 and ITL p50; it returns
what it drew (each panel's title and point count).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results.compare import NOT_SIGNIFICANT, Estimate, Row
from llem_mlflow.results.schema import ExperimentResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

POWER_FILE = "power.png"
_DPI = 110
_CYCLE_COLOUR = "#4c72b0"
_IDLE_COLOUR = "#999999"


#: Points drawn per GPU in power.png: a longer trace is drawn as bucket means (``trace.thin_power``); the
#: full trace is in timeseries.parquet.
POWER_MAX_POINTS = 20_000


def write_power_png(folder: Path, result: ExperimentResult, trace: PowerTrace) -> Path | None:
    """Write ``power.png`` into a result folder; None (nothing written) when there is no power trace."""
    return power_figure(result, trace, Path(folder) / POWER_FILE)


def power_figure(result: ExperimentResult, trace: PowerTrace, path: Path) -> Path | None:
    """Power over time per GPU, measured windows shaded, idle levels marked; None without trace samples."""
    if not trace.samples:
        return None
    fig = _new_figure((10, 4.8))
    ax = fig.add_subplot()
    origin = _origin(result, trace)
    _shade_windows(ax, result, origin)
    _draw_gpus(ax, result, trace, origin)
    ax.set_xlabel("time from the measured window's start (s)")
    ax.set_ylabel("board power (W)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8, ncols=6, frameon=False)
    fig.suptitle(_power_title(result), fontsize=11)
    ax.set_title(_power_subtitle(result), fontsize=8.5, color="#444444")
    return _save(fig, Path(path))


def _origin(result: ExperimentResult, trace: PowerTrace) -> float:
    """Epoch seconds of time zero: the measured window's start, else the first sample."""
    window = result.windows.get("measure")
    if window is not None:
        return window.start_s
    first_s = trace.first_time_s()  # power_figure draws only a trace with samples
    return 0.0 if first_s is None else first_s


def _cycle_spans(result: ExperimentResult) -> list[tuple[float, float]]:
    if result.cycles is not None:
        return [(r.start_s, r.end_s) for r in result.cycles.records]
    window = result.windows.get("measure")
    return [(window.start_s, window.end_s)] if window is not None else []


_PREFILL_COLOUR = "tab:green"


def _shade_windows(ax: Axes, result: ExperimentResult, origin: float) -> None:
    spans = _cycle_spans(result)
    for i, (start, end) in enumerate(spans):
        label = "measured window" if len(spans) == 1 else ("measured cycles" if i == 0 else None)
        ax.axvspan(start - origin, end - origin, color=_CYCLE_COLOUR, alpha=0.12, lw=0, label=label)
        for edge in (start, end):
            ax.axvline(edge - origin, color=_CYCLE_COLOUR, lw=0.6, alpha=0.6)
        if len(spans) > 1:
            ax.text((start + end) / 2 - origin, 0.97, f"cycle {i + 1}", transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, color=_CYCLE_COLOUR)  # fmt: skip
    idle = [w for name, w in result.windows.items() if name.startswith("idle")]
    for i, w in enumerate(idle):
        label = ("idle baseline" if len(idle) == 1 else "idle baseline, idle after") if i == 0 else None
        ax.axvspan(w.start_s - origin, w.end_s - origin, color=_IDLE_COLOUR, alpha=0.12, lw=0, label=label)
    prefill = result.windows.get("prefill_isolated")
    if prefill is not None:
        ax.axvspan(prefill.start_s - origin, prefill.end_s - origin, color=_PREFILL_COLOUR, alpha=0.15, lw=0,
                   label="isolated prefill")  # fmt: skip


def _draw_gpus(ax: Axes, result: ExperimentResult, trace: PowerTrace, origin: float) -> None:
    idle = {g.cuda_index: g.idle_power_w for g in result.energy.per_gpu} if result.energy else {}
    for k, gpu in enumerate(trace.gpus()):
        colour = f"C{k}"
        points = trace.thinned_power(gpu, POWER_MAX_POINTS)  # bucket means past the cap
        times = [t - origin for t, _ in points]
        ax.plot(times, [w for _, w in points], color=colour, lw=0.9, label=f"GPU {gpu}")
        level = idle.get(gpu)
        if level is not None:
            ax.axhline(level, color=colour, ls="--", lw=1, alpha=0.8, label=f"GPU {gpu} idle {level:,.0f} W")


def _power_title(r: ExperimentResult) -> str:
    per_token = f"{r.avg_energy_per_token_j:.4g} J/output token" if r.avg_energy_per_token_j else "energy n/a"
    return f"{r.model}  ·  batch {r.config.batch_size}  ·  {r.precision}  ·  {per_token}"


def _power_subtitle(r: ExperimentResult) -> str:
    gpus = r.environment_snapshot.gpus
    parts = [f"{len(gpus)} x {gpus[0].name}" if gpus else r.device]
    cycles = r.cycles.n if r.cycles else 1
    parts.append(f"{cycles} cycle{'s' if cycles != 1 else ''}, {r.measurement_methodology}")
    parts.append(f"{r.avg_tokens_per_second:,.0f} output tok/s")
    if r.total_energy_j is not None:
        parts.append(f"{r.total_energy_j:,.0f} J gross")
    if r.phase_energy is not None:
        p = r.phase_energy
        parts.append(f"prefill {p.prefill_j:,.0f} J, decode {p.decode_j:,.0f} J")
    return "  ·  ".join(parts)


# ---------------------------------------------------------------- comparison of runs


@dataclass(frozen=True)
class ComparePlot:
    """What ``draw_compare`` drew: the PNG, the x-axis field and each panel as (title, points drawn)."""

    path: Path
    field: str
    panels: tuple[tuple[str, int], ...]


def compare_figure(rows: Sequence[Row], field: str, path: Path) -> Path:
    """``draw_compare``'s PNG (what ``llem-mlflow compare --figure`` writes)."""
    return draw_compare(rows, field, path).path


def draw_compare(rows: Sequence[Row], field: str, path: Path) -> ComparePlot:
    """The runs against ``field``, 95 % intervals as error bars: J/output token and output tok/s, or, when
    no run measured energy (CPU), output tok/s, TTFT p50 and ITL p50.

    ``field`` is a differing setting (``Row.settings``) or ``"run"`` (one point per run). Numeric values
    (all int or float) give a numeric axis in value order; anything else is categorical in row order.
    Each point is labelled with its run; rows whose J/token is ``n.s.`` against the best are hollow.
    """
    panels = compare_panels(rows)
    fig = _new_figure((5 * len(panels), 4.4))
    axes = fig.subplots(1, len(panels))
    xs, ticks = _positions([row.value_of(field) for row in rows])
    drawn = tuple(
        (title, _panel(ax, rows, xs, pick, title, energy=title == J_PER_TOKEN))
        for ax, (title, pick) in zip(axes, panels.items(), strict=True)
    )
    for ax, pick in zip(axes, panels.values(), strict=True):
        values = [pick(row).value for row in rows]
        known = [v for v in values if v is not None]
        if len(known) == len(values) and _spans_decades(known):
            ax.set_yscale("log")  # J/token moves 10x+ with batch size: keep every point readable
        _x_axis(ax, field, xs, ticks)
    fig.suptitle(_compare_title(len(rows), field, energy=J_PER_TOKEN in panels), fontsize=10.5)
    return ComparePlot(_save(fig, Path(path)), field, drawn)


J_PER_TOKEN, TOKENS_PER_S = "J per output token", "output tokens / s"
TTFT_MS, ITL_MS = "TTFT p50 (ms)", "ITL p50 (ms)"


def compare_panels(rows: Sequence[Row]) -> dict[str, Callable[[Row], Estimate]]:
    """Panel title -> the figure it plots: energy panels when any run measured energy, else tok/s and
    latency (a panel of nulls says nothing)."""
    if any(row.j_per_token.value is not None for row in rows):
        return {J_PER_TOKEN: lambda row: row.j_per_token, TOKENS_PER_S: lambda row: row.tokens_per_s}
    return {
        TOKENS_PER_S: lambda row: row.tokens_per_s,
        TTFT_MS: lambda row: Estimate(_in_ms(row.ttft_p50_s)),
        ITL_MS: lambda row: Estimate(_in_ms(row.itl_p50_s)),
    }


def _in_ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _x_axis(ax: Axes, field: str, xs: list[float], ticks: list[str] | None) -> None:
    ax.set_xlabel(field)
    if ticks is None:
        if _spans_decades(xs):
            ax.set_xscale("log")  # batch sizes 1..64: equal steps per doubling, not crowded at the left
        ax.set_xticks(sorted(set(xs)), [f"{x:g}" for x in sorted(set(xs))])
        ax.minorticks_off()
    else:
        ax.set_xticks(range(len(ticks)), ticks, rotation=20 if len(ticks) > 3 else 0, ha="right")


def _compare_title(n: int, field: str, *, energy: bool) -> str:
    if energy:
        return (
            f"{n} runs against {field}  (bars: 95 % interval over cycles; "
            "grey: one cycle, +- its energy uncertainty)"
        )
    return f"{n} runs against {field}  (energy not measured; bars: 95 % interval over cycles)"


def _spans_decades(xs: list[float]) -> bool:
    """Whether a numeric axis is better read on a log scale: all positive and max / min >= 10."""
    return bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 10


def _positions(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """x of each value, and tick labels for a categorical axis (None: numeric axis)."""
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numeric:
        return [float(v) for v in values], None
    ticks: list[str] = []
    for v in values:
        if str(v) not in ticks:
            ticks.append(str(v))
    return [float(ticks.index(str(v))) for v in values], ticks


def _panel(ax: Axes, rows: Sequence[Row], xs: list[float], pick: Any, label: str, *, energy: bool) -> int:
    """Draw one figure's points; returns how many were drawn (rows without a value are left out)."""
    points = [(x, row, pick(row)) for x, row in zip(xs, rows, strict=True) if pick(row).value is not None]
    if not points:
        ax.text(0.5, 0.5, f"{label}: not measured", ha="center", va="center", transform=ax.transAxes)
        return 0
    for x, row, point in points:
        band = row.band if energy and point.low is None else None
        _point(ax, x, point, band, hollow=energy and row.significance == NOT_SIGNIFICANT)
        ax.annotate(row.label, (x, point.value), textcoords="offset points", xytext=(7, 5), fontsize=7.5)
    ax.set_ylabel(label)
    ax.set_title(label + ("  (hollow: n.s. vs the best)" if energy else ""), fontsize=9.5)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2, y=0.2)
    return len(points)


def _point(ax: Axes, x: float, point: Estimate, band: tuple[float, float] | None, *, hollow: bool) -> None:
    """One marker; error bar: the 95 % interval, else (grey) the one-cycle uncertainty ``band``."""
    value = point.value or 0.0
    low, high, colour = point.low, point.high, "C0"
    if (low is None or high is None) and band is not None:
        (low, high), colour = band, "#888888"
    yerr = None if low is None or high is None else [[value - low], [high - value]]
    ax.errorbar([x], [value], yerr=yerr, fmt="o", color="C0", ecolor=colour, mfc="white" if hollow else "C0",
                ms=7, capsize=4)  # fmt: skip


# ---------------------------------------------------------------- shared


def _new_figure(size: tuple[float, float]) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    """Write the PNG atomically (a temp file in the same folder, then rename)."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
