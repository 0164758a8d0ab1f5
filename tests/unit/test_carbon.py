"""The carbon figure: arithmetic with literal numbers and argument validation."""

from __future__ import annotations

import math

import pytest

from llem_mlflow.figures.carbon import carbon_g


def test_one_kwh_at_intensity() -> None:
    assert carbon_g(3.6e6, 400.0) == pytest.approx(400.0)


def test_pue_scales() -> None:
    # 7.2e6 J = 2 kWh; x 1.5 PUE = 3 kWh; x 250 g/kWh = 750 g
    assert carbon_g(7.2e6, 250.0, pue=1.5) == pytest.approx(750.0)


def test_small_run() -> None:
    # 1800 J = 0.0005 kWh; x 1.2 x 300 = 0.18 g
    assert carbon_g(1800.0, 300.0, 1.2) == pytest.approx(0.18)


def test_zero_energy_and_zero_intensity() -> None:
    assert carbon_g(0.0, 400.0) == 0.0
    assert carbon_g(3.6e6, 0.0, 1.3) == 0.0


@pytest.mark.parametrize(
    ("energy_j", "intensity", "pue", "argument"),
    [
        (1.0, -1.0, 1.0, "intensity_g_per_kwh"),
        (1.0, math.nan, 1.0, "intensity_g_per_kwh"),
        (1.0, 400.0, 0.99, "pue"),
        (1.0, 400.0, math.inf, "pue"),
        (-1.0, 400.0, 1.0, "energy_j"),
        (math.nan, 400.0, 1.0, "energy_j"),
    ],
)
def test_invalid_arguments_are_named(energy_j: float, intensity: float, pue: float, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument} must be"):
        carbon_g(energy_j, intensity, pue)
