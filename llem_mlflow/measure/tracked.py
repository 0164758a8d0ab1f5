"""``Tracked``: what one measured block of code (``run.track``) produced: its edges, energies and trace.

A plain data class, so that logging it (``tracking``) needs nothing from the code that measures it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llem_mlflow.measure.trace import PowerTrace


@dataclass
class Tracked:
    """What one tracked block measured: energies in J keyed by CUDA index.

    ``energy_j`` is None when energy was not measured (no NVML); a GPU whose delta is unknown (a counter
    read failed, the GPU was lost) maps to None. ``energy_note`` says why energy is missing or partial.
    """

    name: str
    start_s: float = 0.0
    end_s: float = 0.0
    energy_j: dict[int, float | None] | None = None
    trace: PowerTrace | None = None
    failed: bool = False
    warnings: list[str] = field(default_factory=list)
    energy_note: str | None = None

    @property
    def duration_s(self) -> float:
        """Seconds between the synced edges."""
        return self.end_s - self.start_s

    @property
    def energy_incomplete(self) -> bool:
        """True when GPUs were measured but the energy of at least one of them is unknown."""
        return self.energy_j is not None and any(v is None for v in self.energy_j.values())

    @property
    def total_energy_j(self) -> float | None:
        """Energy summed over the GPUs; None when not measured or any GPU's energy is unknown."""
        if self.energy_j is None or self.energy_incomplete:
            return None
        return sum(v for v in self.energy_j.values() if v is not None)

    @property
    def avg_power_w(self) -> float | None:
        """Mean board power over the block (counter energy / duration), summed over the GPUs."""
        total = self.total_energy_j
        return None if total is None or self.duration_s <= 0 else total / self.duration_s

    @property
    def status(self) -> str:
        """``failed`` (the block raised), ``energy_incomplete`` (a GPU's energy is unknown) or ``ok``."""
        if self.failed:
            return "failed"
        return "energy_incomplete" if self.energy_incomplete else "ok"

    def warn(self, message: str) -> None:
        """Keep ``message`` in ``warnings`` (once)."""
        if message not in self.warnings:
            self.warnings.append(message)
