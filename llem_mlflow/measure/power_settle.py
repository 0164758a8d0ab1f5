"""Power settle: after latency has settled, keep warming up until the GPUs' power stops climbing too.

Latency settles long before power does, and power then creeps up slowly as the board warms. On an H100
(~1.1B llama-shaped, batch 64, five 20 s cycles after a warm-up that stopped at a latency CV under 2 %) the
cycles drew 371.9, 380.5, 384.0, 382.6, 383.6 W while the GPU went from 52.4 to 57 C at a constant
1980 MHz: ~0.5 W/s, only ~0.25 % between two 2 s stretches, so comparing consecutive stretches calls it
settled at once; over a 20 s window it is ~2.6 %. gpt2 batch 8 (~195 W, idle 125 W): 194.0 -> 196.5 W
over 100 s, 3.5 % of the power above idle. So the rule fits the trend and projects it over one measured
window. With ``warmup_power_settle_pct`` set and GPUs to read, warm-up goes on (the same measured batches,
in the same rotation) in stretches; the rule:

    a stretch runs whole batches, one after another (each followed by a sync), until it has lasted at
    least ``POWER_STRETCH_S`` (2 s); its mean power is the sum over the GPUs of the energy-counter delta
    (``counters.read_start`` / ``read_mark``: CUDA-synced edges) over its duration, placed at its
    mid-time. From the ``SLOPE_STRETCHES``-th (5, ~10 s) stretch on, a least-squares line through the
    last 5 (mid-time, power) points gives the drift per window, |slope| x horizon / P_last x 100 %, where
    the horizon is ``min_window_s`` when set (> 0), else ``POWER_HORIZON_S`` (20 s: the GPU default window
    and ML.ENERGY's least steady window) and P_last the last stretch's power. Settled at the first
    stretch where that drift is < ``warmup_power_settle_pct``; otherwise stop once the stage has run
    ``warmup_power_max_s`` (five stretches always run), with a warning naming the drift.

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
#: Stretches the drift line is fitted through (the last ones); none is judged before this many ran.
SLOPE_STRETCHES = 5
#: Window the drift is projected over when ``min_window_s`` is 0: the GPU default window.
POWER_HORIZON_S = 20.0
#: How the warning of a counter read that ended the stage begins (the CLI summary looks for it).
POWER_READ_FAILED = "Power settle warm-up ended: an energy counter read failed"
FIRST_CYCLE = "the first cycle may draw less than the later ones"


@dataclass(frozen=True)
class PowerSettle:
    """What the power settle did: each stretch's mean power (W, summed over the GPUs), whether it settled,
    its seconds and the warning it leaves (none when it settled); to check the decision: each stretch's
    mid-time (s from the stage's start), the last fit's slope (W/s) and drift (% of the last stretch's
    power over ``horizon_s``; None before ``SLOPE_STRETCHES`` stretches, or at no power)."""

    power_w: list[float]
    settled: bool
    seconds: float
    notes: list[str] = field(default_factory=list)
    mid_s: list[float] = field(default_factory=list)
    slope_w_per_s: float | None = None
    drift_pct_per_window: float | None = None
    horizon_s: float = POWER_HORIZON_S


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
    horizon_s = horizon_for(cfg.min_window_s)
    show.stage(
        f"warm-up: until power settles (drift fitted over the last {SLOPE_STRETCHES} stretches of "
        f">= {POWER_STRETCH_S:g} s under {pct:g} % per {horizon_s:g} s window), at most "
        f"{cfg.warmup_power_max_s:g} s"
    )
    start_s, batch = clock(), first
    mids: list[float] = []
    powers: list[float] = []
    slope: float | None = None
    drift: float | None = None

    def done(ok: bool, seconds: float, notes: list[str]) -> PowerSettle:
        return PowerSettle(powers, ok, seconds, notes, mids, slope, drift, horizon_s)

    while True:
        try:
            mid_s, power, batch = _stretch(backend, devices, groups, batch, cfg.max_output_tokens, clock)
        except DeviceError as e:
            return done(
                False, clock() - start_s, [f"{POWER_READ_FAILED} ({e}); the run goes on: {FIRST_CYCLE}"]
            )
        mids.append(mid_s - start_s)
        powers.append(power)
        done_s = clock() - start_s
        if len(powers) < SLOPE_STRETCHES:
            continue
        slope = fit_slope_w_per_s(mids[-SLOPE_STRETCHES:], powers[-SLOPE_STRETCHES:])
        drift = drift_pct(slope, horizon_s, powers[-1])
        if drift is not None and drift < pct:
            show.stage(
                f"warm-up: power settled after {len(powers)} stretches ({_trend(powers)}; "
                f"~{drift:.2f} % per {horizon_s:g} s window)"
            )
            return done(True, done_s, [])
        if done_s >= cfg.warmup_power_max_s:
            return done(False, done_s, [drifting_note(done_s, powers, slope, drift, horizon_s)])


def horizon_for(min_window_s: float) -> float:
    """The window a drift is projected over: ``min_window_s`` when set (> 0), else ``POWER_HORIZON_S``."""
    return min_window_s if min_window_s > 0 else POWER_HORIZON_S


def fit_slope_w_per_s(times_s: Sequence[float], powers_w: Sequence[float]) -> float:
    """Least-squares slope (W/s) of ``powers_w`` against ``times_s`` (at least two distinct times)."""
    n = len(times_s)
    mean_t, mean_p = sum(times_s) / n, sum(powers_w) / n
    spread = sum((t - mean_t) ** 2 for t in times_s)
    if spread <= 0:
        raise ValueError(f"a slope needs at least two distinct times, got {list(times_s)!r}")
    return sum((t - mean_t) * (p - mean_p) for t, p in zip(times_s, powers_w, strict=True)) / spread


def drift_pct(slope_w_per_s: float, horizon_s: float, last_w: float) -> float | None:
    """|slope| x ``horizon_s`` as a % of ``last_w``; None at no power (a counter that never moved)."""
    return abs(slope_w_per_s) * horizon_s / last_w * 100 if last_w > 0 else None


def drifting_note(
    seconds: float, powers_w: list[float], slope_w_per_s: float, drift: float | None, horizon_s: float
) -> str:
    """The warning of a power settle that reached its cap."""
    way = "climbing" if slope_w_per_s >= 0 else "falling"
    size = "(no power)" if drift is None else f"~{drift:.1f} % per {horizon_s:g} s window"
    fitted = powers_w[-SLOPE_STRETCHES:]
    return (
        f"Warm-up: power still drifting after {seconds:.0f} s ({way} {size}; last {len(fitted)} stretches "
        f"{fitted[0]:,.1f} W -> {fitted[-1]:,.1f} W): {FIRST_CYCLE}"
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
) -> tuple[float, float, int]:
    """One stretch from batch index ``batch``: (its mid-time on ``clock``, its mean power summed over the
    GPUs, the next batch index).

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
    mid_s = (window.start_s + window.end_s) / 2
    return mid_s, sum(window.energy_j.values()) / window.duration_s, batch
