"""figures/pareto: the energy-latency front, the best point under a latency target, which points are
skipped and why, the default latency axis, interval overlaps; results/pareto_plot: pareto.png."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.lines import Line2D

from llem_mlflow.errors import ConfigError
from llem_mlflow.figures import pareto
from llem_mlflow.figures.pareto import FrontPoint
from llem_mlflow.results import pareto_plot

E, ITL, TTFT, E2E = (
    "energy/per_output_token_j",
    "latency/itl_p50_s",
    "latency/ttft_p50_s",
    "latency/e2e_p99_s",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def pt(label: str, energy: float, latency: float, ci: tuple[float, float] | None = None) -> FrontPoint:
    return FrontPoint(label, energy, latency, ci, key=f"run-{label}")


# (label, J/token, ITL s). By hand: A is the fastest; B and C are the same point (a tie: both stay);
# D is the least energy. E is dominated by B (less energy and faster), F by A (same energy, A faster),
# G by D (same energy, D faster). Front, by latency: A (10 ms), B, C (20 ms; B before C by label), D.
SEVEN = [
    pt("A", 0.50, 0.010),
    pt("B", 0.30, 0.020),
    pt("C", 0.30, 0.020),
    pt("D", 0.10, 0.050),
    pt("E", 0.40, 0.030),
    pt("F", 0.50, 0.015),
    pt("G", 0.10, 0.060),
]


def labels(points: list[FrontPoint]) -> list[str]:
    return [p.label for p in points]


def test_front_of_a_hand_made_set() -> None:
    assert labels(pareto.front(SEVEN)) == ["A", "B", "C", "D"]
    assert labels(pareto.front(list(reversed(SEVEN)))) == ["A", "B", "C", "D"]  # order of input: no matter


def test_front_keeps_the_input_objects_and_edge_sets() -> None:
    assert pareto.front([]) == []
    only = pt("only", 1.0, 1.0)
    assert pareto.front([only]) == [only]
    # A strict trade-off: nobody dominates anybody, sorted by latency.
    trade = [pt("slow", 0.1, 0.3), pt("fast", 0.3, 0.1), pt("mid", 0.2, 0.2)]
    assert labels(pareto.front(trade)) == ["fast", "mid", "slow"]
    assert pareto.dominates(pt("x", 1.0, 1.0), pt("y", 1.0, 2.0))
    assert not pareto.dominates(pt("x", 1.0, 1.0), pt("y", 1.0, 1.0))


@pytest.mark.parametrize(
    ("max_latency", "expected"),
    [
        (0.005, None),  # admits none
        (0.010, "A"),  # admits one, exactly at the bound
        (0.012, "A"),
        (0.025, "B"),  # admits A, B, C, F: B and C tie at 0.30 J -> the first given
        (0.035, "B"),  # E (0.40) is not better
        (0.060, "D"),  # D and G tie in energy -> the lower latency (D)
        (math.inf, "D"),
    ],
)
def test_best_under(max_latency: float, expected: str | None) -> None:
    best = pareto.best_under(SEVEN, max_latency)
    assert (best.label if best else None) == expected


def test_best_under_energy_tie_goes_to_lower_latency_whatever_the_order() -> None:
    assert pareto.best_under([pt("G", 0.10, 0.060), pt("D", 0.10, 0.050)], 1.0) == pt("D", 0.10, 0.050)
    assert pareto.best_under([], 1.0) is None


def test_best_under_rejects_a_target_that_is_not_a_number() -> None:
    with pytest.raises(ConfigError, match="not a number"):
        pareto.best_under(SEVEN, math.nan)


def test_points_from_skips_points_without_both_values_and_says_why() -> None:
    items: list[tuple[str, Mapping[str, float], object]] = [
        ("ok", {E: 0.2, ITL: 0.02, f"{E}_ci95_low": 0.18, f"{E}_ci95_high": 0.22}, 1),
        ("no-ci", {E: 0.3, ITL: 0.01}, 2),
        ("half-ci", {E: 0.3, ITL: 0.01, f"{E}_ci95_low": 0.25}, 3),
        ("no-energy", {ITL: 0.01}, 4),
        ("no-latency", {E: 0.1}, 5),
        ("nan-energy", {E: math.nan, ITL: 0.01}, 6),
        ("failed", {}, 7),
    ]
    points, skipped = pareto.points_from(items, latency_metric=ITL)
    assert points == [
        FrontPoint("ok", 0.2, 0.02, (0.18, 0.22), 1),
        FrontPoint("no-ci", 0.3, 0.01, None, 2),
        FrontPoint("half-ci", 0.3, 0.01, None, 3),
    ]
    reasons = {s.label: (s.key, s.reason) for s in skipped}
    assert reasons == {
        "no-energy": (4, f"no {E} value"),
        "no-latency": (5, f"no {ITL} value"),
        "nan-energy": (6, f"{E} is not a finite number (nan)"),
        "failed": (7, f"no {E} value"),
    }


def test_points_from_picks_the_latency_axis_from_the_measured_points() -> None:
    items: list[tuple[str, Mapping[str, float], object]] = [
        ("server-1", {E: 0.2, TTFT: 0.05, E2E: 1.0}, "r1"),
        ("server-2", {E: 0.1, TTFT: 0.09, E2E: 2.0, ITL: 0.01}, "r2"),
        ("failed", {}, "r3"),  # no energy: it does not rule out TTFT
    ]
    points, skipped = pareto.points_from(items)
    assert [(p.label, p.latency) for p in points] == [("server-1", 0.05), ("server-2", 0.09)]
    assert [(s.label, s.reason) for s in skipped] == [("failed", f"no {E} value")]
    # No latency metric in common: every item is skipped, with that reason.
    points, skipped = pareto.points_from([("a", {E: 0.2, TTFT: 0.05}, 1), ("b", {E: 0.2, ITL: 0.01}, 2)])
    assert points == []
    assert [s.label for s in skipped] == ["a", "b"]
    assert all(s.reason.startswith("no latency metric") for s in skipped)


def test_points_from_reads_another_energy_metric_and_its_interval() -> None:
    net = "energy/net_per_output_token_j"
    metrics = {net: -0.01, f"{net}_ci95_low": -0.02, f"{net}_ci95_high": 0.0, ITL: 0.02, E: 5.0}
    points, _ = pareto.points_from([("p", metrics, None)], energy_metric=net, latency_metric=ITL)
    assert points == [FrontPoint("p", -0.01, 0.02, (-0.02, 0.0), None)]


@pytest.mark.parametrize(
    ("metrics_list", "expected"),
    [
        ([{ITL: 0.01, TTFT: 0.1}, {ITL: 0.02, TTFT: 0.2}], ITL),
        ([{ITL: 0.01, TTFT: 0.1}, {TTFT: 0.2}], TTFT),  # one lacks ITL
        ([{ITL: math.nan, TTFT: 0.1}, {ITL: 0.02, TTFT: 0.2}], TTFT),  # a NaN is no value
        ([{ITL: 0.01, E2E: 1.0}, {TTFT: 0.2, E2E: 2.0}], E2E),
        ([{ITL: 0.01}, {TTFT: 0.2}], None),
        ([{E: 0.1}], None),
        ([], None),
    ],
)
def test_default_latency_metric(metrics_list: list[Mapping[str, float]], expected: str | None) -> None:
    assert pareto.default_latency_metric(metrics_list) == expected


def test_overlaps_on_energy_intervals() -> None:
    a = pt("a", 0.30, 0.01, (0.28, 0.32))
    assert pareto.overlaps(a, pt("b", 0.33, 0.02, (0.31, 0.35)))
    assert pareto.overlaps(a, pt("b", 0.34, 0.02, (0.32, 0.36)))  # touching
    assert pareto.overlaps(a, pt("b", 0.30, 0.02, (0.29, 0.31)))  # inside
    assert not pareto.overlaps(a, pt("b", 0.40, 0.02, (0.35, 0.45)))
    assert not pareto.overlaps(pt("b", 0.40, 0.02, (0.35, 0.45)), a)
    assert not pareto.overlaps(a, pt("b", 0.30, 0.02))  # unknown interval: nothing to say


def test_overlapping_neighbours_on_a_front() -> None:
    f = [
        pt("a", 0.5, 0.01, (0.45, 0.55)),
        pt("b", 0.42, 0.02, (0.40, 0.46)),
        pt("c", 0.2, 0.03, (0.19, 0.21)),
    ]
    assert [(x.label, y.label) for x, y in pareto.overlapping_neighbours(f)] == [("a", "b")]
    assert pareto.overlapping_neighbours(f[:1]) == []


def test_axis_titles_carry_units() -> None:
    assert pareto.axis_title(ITL) == "ITL p50 (ms)"
    assert pareto.axis_title(E2E) == "E2E latency p99 (ms)"
    assert pareto.axis_title(E) == "energy per output token (J/token)"
    assert pareto.in_ms(TTFT) and not pareto.in_ms(E)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 10_000 < len(data) < 150_000, f"{path.name} is {len(data)} bytes"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def sweep_points() -> list[FrontPoint]:
    """A batch-size sweep: energy and latency both span more than 10x (log axes), with intervals."""
    rows = [
        ("batch_size=1", 2.10, 0.0080, (1.95, 2.25)),
        ("batch_size=4", 0.62, 0.0095, (0.58, 0.66)),
        ("batch_size=8, precision=float32", 0.70, 0.0150, (0.64, 0.77)),
        ("batch_size=16", 0.21, 0.0140, (0.20, 0.23)),
        ("batch_size=32", 0.20, 0.0230, (0.19, 0.215)),
        ("batch_size=64, a long label that is cut short", 0.12, 0.0900, None),
        ("batch_size=64, precision=float32", 0.16, 0.1200, (0.15, 0.17)),
    ]
    return [FrontPoint(label, e, lat, ci, key=i) for i, (label, e, lat, ci) in enumerate(rows)]


def test_pareto_png_is_written(tmp_path: Path) -> None:
    points = sweep_points()
    best = pareto.front(points)
    assert [p.key for p in best] == [0, 1, 3, 4, 5]
    assert [(a.key, b.key) for a, b in pareto.overlapping_neighbours(best)] == [(3, 4)]
    path = pareto_plot.write_pareto_png(
        tmp_path / "sweep", points, best, energy_metric=E, latency_metric=ITL, title="7 points: ITL p50"
    )
    assert path == tmp_path / "sweep" / "pareto.png"  # the name the sweep logs on its parent run
    assert png_size(path) == (750, 520)
    assert [p.name for p in path.parent.iterdir()] == [pareto_plot.PARETO_PNG]  # no temp file left


def test_pareto_png_of_one_point_and_of_none(tmp_path: Path) -> None:
    one = [pt("only", 0.3, 0.02)]
    path = pareto_plot.write_pareto_png(tmp_path, one, one, energy_metric=E, latency_metric=TTFT, title="one")
    assert png_size(path) == (750, 520)
    (tmp_path / "none").mkdir()
    path = pareto_plot.write_pareto_png(
        tmp_path / "none", [], [], energy_metric=E, latency_metric=ITL, title="none"
    )
    assert png_size(path) == (750, 520)


def test_log_axes_only_past_ten_x() -> None:
    assert pareto_plot._spans_decade([1.0, 10.5])
    assert not pareto_plot._spans_decade([1.0, 10.0])
    assert not pareto_plot._spans_decade([-1.0, 20.0])
    assert not pareto_plot._spans_decade([])


def data(line: Line2D) -> tuple[list[float], list[float]]:
    xs, ys = np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)
    return xs.tolist(), ys.tolist()


def test_what_is_drawn() -> None:
    """Every point a marker, the intervals as bars where known, the front a staircase, the overlapping
    neighbours one band, every point labelled (long labels cut)."""
    points = sweep_points()
    best = pareto.front(points)
    fig = pareto_plot._new_figure()
    ax = fig.add_subplot()
    pareto_plot._draw(ax, points, best, scale=1000.0)
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(points)
    assert len([c for c in bars if c.has_yerr]) == len([p for p in points if p.energy_ci95 is not None])
    (staircase,) = [line for line in ax.lines if line.get_drawstyle() == "steps-post"]
    xs, ys = data(staircase)
    assert xs == pytest.approx([p.latency * 1000 for p in best])
    assert ys == pytest.approx([p.energy for p in best])
    bands = [line for line in ax.lines if line.get_linewidth() == 6]
    assert len(bands) == 1
    assert data(bands[0])[0] == pytest.approx([14.0, 23.0])  # batch 16 and 32 overlap
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == len(points)
    assert "batch_size=16" in texts
    assert all(len(t) <= 28 for t in texts)
