"""An optional carbon figure from a configured grid carbon intensity and PUE; never a network lookup.

Rules:

- ``carbon_g = energy_j / 3.6e6 * pue * intensity_g_per_kwh``: joules to kWh (1 kWh = 3.6e6 J), scaled
  by the data centre's power usage effectiveness (facility energy / IT energy), times the grid's
  intensity in grams CO2-equivalent per kWh.
- The intensity and PUE are what the user configured: no default grid, no lookup by location or time.
  A figure built from them is only as good as those two numbers (grid intensity varies by hour and by
  region several-fold).
- Validation: ``energy_j`` finite and >= 0 (pass gross energy: net energy can be negative),
  ``intensity_g_per_kwh`` finite and >= 0, ``pue`` finite and >= 1; otherwise ``ValueError`` naming the
  argument.
"""

from __future__ import annotations

import math

J_PER_KWH = 3.6e6


def carbon_g(energy_j: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """Grams CO2e for ``energy_j`` joules at ``intensity_g_per_kwh`` (gCO2e/kWh) and ``pue``."""
    if not (math.isfinite(energy_j) and energy_j >= 0):
        raise ValueError(f"energy_j must be a finite number >= 0, got {energy_j!r}")
    if not (math.isfinite(intensity_g_per_kwh) and intensity_g_per_kwh >= 0):
        raise ValueError(f"intensity_g_per_kwh must be a finite number >= 0, got {intensity_g_per_kwh!r}")
    if not (math.isfinite(pue) and pue >= 1):
        raise ValueError(f"pue must be a finite number >= 1, got {pue!r}")
    return energy_j / J_PER_KWH * pue * intensity_g_per_kwh
