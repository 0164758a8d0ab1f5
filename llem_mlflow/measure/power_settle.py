"""Power settle: after latency has settled, keep warming up until the GPUs' power stops climbing too.

Latency settles long before power does: on an H100 (~1.1B llama-shaped, batch 64, five 20 s cycles after
a warm-up that stopped at a latency CV under 2 %) cycle 1 drew 372 W and cycles 2-5 381-384 W, so the
first cycle's J/token sat 2.6 % below the others. With ``warmup_power_settle_pct`` set and GPUs to read,
warm-up goes on (the same measured batches, in the same rotation) in stretches; the rule:

    a stretch runs whole batches, one after another (each followed by a sync), until it has lasted at
    least ``POWER_STRETCH_S`` (2 s); its mean power is the sum over the GPUs of the energy-counter delta
    (``counters.read_start`` / ``read_mark``: CUDA-synced edges) over its duration. Settled at the first
    stretch k >= 2 with |P_k - P_k-1| / P_k-1 x 100 < ``warmup_power_settle_pct``; otherwise stop once
    the stage has run ``warmup_power_max_s`` (two stretches always run), with a warning.

The counter, never ``power_w()`` (a 1 s average on Hopper), gives the power. A counter read that fails
(after the counter module's retries) ends the stage with a warning; it never fails the run. Without GPUs
(a CPU run) the stage is skipped without a word. Owns ``PowerSettle`` (what the stage did) and
``settle_power``; the clock is injected (``warmup.TIMER`` in a run, a fake in tests).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import DeviceError
from llem_mlflow.measure.counters import read_mark, read_start, window_between
from llem_mlflow.measure.progress import Progress
from llem_mlflow.protocols import Backend, GpuDevice

#: Least length of one stretch (whole batches are added until it is reached): ~20 counter updates.
POWER_STRETCH_S = 2.0
#: How the warning of a counter read that ended the stage begins (the CLI summary looks for it).
POWER_READ_FAILED = "Power settle warm-up ended: an energy counter read failed"
FIRST_CYCLE = "the first cycle may draw less than the later ones"


@dataclass(frozen=True)
class PowerSettle:
    """What the power settle did: each stretch's mean power (W, summed over the GPUs), whether it settled,
    its seconds and the warning it leaves (none when it settled)."""

    power_w: list[float]
    settled: bool
    seconds: float
    notes: list[str] = field(default_factory=list)


def settle_power(
    cfg: ExperimentConfig,
    backend: Backend,
    devices: Sequence[GpuDevice],
    groups: list[list[list[int]]],
    show: Progress,
    *,
    first: int,
    clock: Callable[[], float],
) -> PowerSettle | None:
    """Warm up in stretches until power settles (the module's rule); None when not asked or no GPU.

    ``first``: the index (into ``groups``, cycled) of the first batch to run, so the rotation of the
    warm-up before it goes on.
    """
    pct = cfg.warmup_power_settle_pct
    if pct is None or not devices or not groups:
        return None
    show.stage(
        f"warm-up: until power settles (stretches of >= {POWER_STRETCH_S:g} s within {pct:g} % of the one "
        f"before), at most {cfg.warmup_power_max_s:g} s"
    )
    start_s, batch = clock(), first
    powers: list[float] = []
    while True:
        try:
            power, batch = _stretch(backend, devices, groups, batch, cfg.max_output_tokens, clock)
        except DeviceError as e:
            note = f"{POWER_READ_FAILED} ({e}); the run goes on: {FIRST_CYCLE}"
            return PowerSettle(powers, False, clock() - start_s, [note])
        powers.append(power)
        done_s = clock() - start_s
        if len(powers) >= 2 and settled(powers[-2], powers[-1], pct):
            show.stage(f"warm-up: power settled after {len(powers)} stretches ({_trend(powers)})")
            return PowerSettle(powers, True, done_s)
        if len(powers) >= 2 and done_s >= cfg.warmup_power_max_s:
            return PowerSettle(powers, False, done_s, [drifting_note(done_s, powers)])


def settled(before_w: float, last_w: float, pct: float) -> bool:
    """Whether ``last_w`` is within ``pct`` % of ``before_w`` (a stretch of no power never settles)."""
    return before_w > 0 and abs(last_w - before_w) / before_w * 100 < pct


def drifting_note(seconds: float, powers_w: list[float]) -> str:
    """The warning of a power settle that reached its cap."""
    return (
        f"Warm-up: power still drifting after {seconds:.0f} s (last two stretches {powers_w[-2]:,.1f} W, "
        f"{powers_w[-1]:,.1f} W): {FIRST_CYCLE}"
    )


def _trend(powers_w: list[float]) -> str:
    """``372.0 W -> 383.5 W``: the first stretch's power and the last."""
    return f"{powers_w[0]:,.1f} W -> {powers_w[-1]:,.1f} W"


def _stretch(
    backend: Backend,
    devices: Sequence[GpuDevice],
    groups: list[list[list[int]]],
    batch: int,
    max_output_tokens: int,
    clock: Callable[[], float],
) -> tuple[float, int]:
    """One stretch from batch index ``batch``: (its mean power summed over the GPUs, the next batch index).

    Raises:
        DeviceError: a counter read failed, or a counter went backwards.
    """
    start = read_start(devices, backend.synchronize, clock)
    while True:
        backend.generate(groups[batch % len(groups)], max_output_tokens)
        batch += 1
        backend.synchronize()
        if clock() - start.at_s >= POWER_STRETCH_S:
            break
    window = window_between(start, read_mark(devices, backend.synchronize, clock))
    return sum(window.energy_j.values()) / window.duration_s, batch
