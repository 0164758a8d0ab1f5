"""``pareto.png``: the energy-latency front of a sweep (or of compared runs) as a figure.

Imports matplotlib lazily, inside functions, and draws on a ``Figure`` with the Agg canvas (no pyplot,
no display), as ``results/plots.py`` does. The numbers come from ``figures/pareto.py``.

What is drawn: latency on x (ms), energy on y (J/token); every point in grey, the front highlighted and
joined as a staircase (from each front point the line runs right at its energy to the next point's
latency, then down: the least energy reachable within a latency bound); each point's energy 95 %
interval as a vertical error bar where known; each point labelled (its label, shortened); neighbours on
the front whose energy intervals overlap joined by a wide orange band (their order is not established).
An axis is logarithmic when its values are all positive and span more than 10x.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llem_mlflow.figures.pareto import FrontPoint, axis_title, in_ms, overlapping_neighbours

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PARETO_PNG = "pareto.png"
_DPI = 100
_SIZE = (7.5, 5.2)
_LABEL_CHARS = 28
_OTHER = "#a0a0a0"
_FRONT = "C0"
_OVERLAP = "tab:orange"
_NOTE = (
    "markers: means over cycles; bars: 95 % energy interval; "
    "staircase: the least energy within a {bound} bound"
)


def write_pareto_png(
    folder: Path,
    points: Sequence[FrontPoint],
    front_points: Sequence[FrontPoint],
    *,
    energy_metric: str,
    latency_metric: str,
    title: str,
    name: str = PARETO_PNG,
) -> Path:
    """Write ``pareto.png`` into ``folder`` (created if needed) atomically; returns its path.

    ``points``: every placed point; ``front_points``: the front (``figures.pareto.front(points)``, in its
    order). With no points the figure says so instead of drawing an empty chart.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    scale = 1000.0 if in_ms(latency_metric) else 1.0
    if points:
        _draw(ax, points, front_points, scale)
        _log_if_wide(ax, points, scale)
    else:
        ax.text(0.5, 0.5, "no point has both values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel(axis_title(latency_metric))
    ax.set_ylabel(axis_title(energy_metric))
    ax.grid(True, which="both", alpha=0.25)
    fig.suptitle(title, fontsize=10.5)
    bound = "latency" if in_ms(latency_metric) else latency_metric.rsplit("/", 1)[-1]
    ax.set_title(_NOTE.format(bound=bound), fontsize=7.5, color="#444444")
    if points:
        fig.legend(loc="outside lower center", fontsize=7.5, ncols=3, frameon=False)
    target = Path(folder) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, target)


def _draw(ax: Axes, points: Sequence[FrontPoint], front_points: Sequence[FrontPoint], scale: float) -> None:
    others = [p for p in points if p not in front_points]
    for group, colour, name in ((others, _OTHER, "dominated"), (front_points, _FRONT, "front")):
        if group:
            _markers(ax, group, colour, scale, f"{name} ({len(group)})")
    if front_points:
        xs = [p.latency * scale for p in front_points]
        ax.step(xs, [p.energy for p in front_points], where="post", color=_FRONT, lw=1.3, alpha=0.8, zorder=2)
    for i, (a, b) in enumerate(overlapping_neighbours(front_points)):
        label = "95 % intervals overlap: order not established" if i == 0 else None
        ax.plot([a.latency * scale, b.latency * scale], [a.energy, b.energy], color=_OVERLAP, lw=6,
                alpha=0.35, solid_capstyle="round", zorder=1, label=label)  # fmt: skip
    for p in points:
        colour = "#222222" if p in front_points else "#777777"
        ax.annotate(_short(p.label), (p.latency * scale, p.energy), textcoords="offset points",
                    xytext=(5, 4), fontsize=6.5, color=colour)  # fmt: skip
    ax.margins(x=0.12, y=0.12)


def _markers(ax: Axes, group: Sequence[FrontPoint], colour: str, scale: float, label: str) -> None:
    """One marker per point, its energy interval as a vertical error bar where known."""
    for i, p in enumerate(group):
        yerr = None
        if p.energy_ci95 is not None:
            low, high = p.energy_ci95
            yerr = [[max(p.energy - low, 0.0)], [max(high - p.energy, 0.0)]]
        ax.errorbar([p.latency * scale], [p.energy], yerr=yerr, fmt="o", color=colour, ecolor=colour,
                    ms=6, capsize=3, lw=1, zorder=3, label=label if i == 0 else None)  # fmt: skip


def _log_if_wide(ax: Axes, points: Sequence[FrontPoint], scale: float) -> None:
    """Log axes where the values span more than 10x, ticks labelled as plain numbers (1, 2, 5 per decade)."""
    from matplotlib.ticker import FuncFormatter

    major = FuncFormatter(lambda v, _: f"{v:g}")
    minor = FuncFormatter(lambda v, _: f"{v:g}" if _leading_digit(v) in (2, 5) else "")
    if _spans_decade([p.latency * scale for p in points]):
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(major)
        ax.xaxis.set_minor_formatter(minor)
    lows = [p.energy_ci95[0] if p.energy_ci95 else p.energy for p in points]
    if _spans_decade([p.energy for p in points]) and min(lows) > 0:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(major)
        ax.yaxis.set_minor_formatter(minor)


def _leading_digit(value: float) -> int:
    """1 for 0.1, 2 for 20, 5 for 0.05: the first significant digit of a positive tick value."""
    return int(round(value / 10 ** math.floor(math.log10(value)))) if value > 0 else 0


def _spans_decade(values: Sequence[float]) -> bool:
    """Whether values are all positive and max / min > 10 (then a log axis keeps each point readable)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def _short(label: str) -> str:
    return label if len(label) <= _LABEL_CHARS else label[: _LABEL_CHARS - 1] + "\u2026"


def _new_figure() -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=_SIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    from llem_mlflow.results.files import atomic_write

    return atomic_write(path, lambda f: fig.savefig(f, format="png"))
