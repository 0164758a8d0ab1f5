"""Quality flags of one measurement: conditions under which its energy figures deserve less trust.

This module owns the rules and their thresholds. Each rule is a small pure function over plain numbers
that returns a ``QualityFlag`` (a name and a plain-language message) when its condition holds, else
None; ``evaluate`` runs every rule on a ``QualityInputs`` and returns the flags that fired, in the order
of ``RULE_NAMES``. A rule whose inputs are unknown (None, or too few samples) does not fire. Flag names
become MLflow tags ``llem.quality.<name>`` (``mlflow_tags``). Bounds are strict: a value exactly at a
threshold does not fire.

Rules and thresholds:

- ``net_below_uncertainty``: the net energy is smaller in size than its uncertainty,
  ``|net_j| < net_uncertainty_j``; the net figure is then indistinguishable from zero.
- ``short_window``: the window is shorter than ``MIN_COUNTER_UPDATES`` (10) updates of the energy
  counter (``window_s < 10 x counter_update_s``, 1 s at the usual 0.1 s), so counter quantisation
  dominates; or, when steady state was requested, shorter than ``STEADY_STATE_MIN_WINDOW_S`` (30 s),
  the minimum ML.ENERGY uses for a steady-state measurement.
- ``throttling``: at least one trace sample in the window carries an NVML clocks-event-reason bit that
  means a real slowdown: SW power cap 0x4, HW slowdown 0x8, SW thermal slowdown 0x20, HW thermal
  slowdown 0x40, HW power brake slowdown 0x80 (``THROTTLE_SLOWDOWN_BITS``). GPU idle 0x1, applications
  clocks setting 0x2, sync boost 0x10 and display clock setting 0x100 are not slowdowns and are ignored.
  Any hardware or thermal bit fires the flag; SW power cap fires it only when set in at least 5 % of
  the window's samples that have a reading (``SW_POWER_CAP_MIN_FRACTION``): on an H200 at ~270 W (limit
  700 W) it flickered on in 0.07-1.2 % of samples (the controller reacting to instant peaks) without a
  clock loss the window could show. The message names the reasons seen and in how many of the samples
  that had a reading.
- ``temperature_drift``: the temperature rose by more than ``MAX_TEMPERATURE_RISE_C`` (10 degC) over the
  window: last minus first valid (not None, finite) sample; the GPU was not thermally steady, so power
  (leakage grows with temperature) drifted too. A fall does not fire.
- ``other_processes``: another compute process was seen on the measured GPUs during the window; the
  counter is per board, so its energy is counted too. The rule counts, it does not match PIDs: inside a
  container NVML may list host PIDs (never equal to ``os.getpid()``) or none at all. Each trace sample
  in a window carries the number of compute processes NVML listed on its GPU
  (``nvmlDeviceGetComputeRunningProcesses``); this process holds a CUDA context on every measured GPU,
  so it is one of them and the others are ``max(count - 1, 0)``. A count of 0 means NVML cannot see the
  processes (e.g. a container without the host PID namespace) and counts as 0 others: such a run is
  never flagged. ``other_processes`` is the largest number of others any sample of any measured GPU
  saw inside the windows (samples during idle or between windows are ignored); None when no sample
  has a count (NVML could not list processes), and then the rule does not fire.
- ``idle_drift``: idle power after the window differs from idle power before it by more than
  ``MAX_IDLE_DRIFT_FRACTION`` (10 %) of the before value AND by more than ``MAX_IDLE_DRIFT_W`` (5 W); the
  baseline subtracted for net energy was then not stable. Both must hold so that a few watts on a low
  idle, or a small percentage on a high one, do not fire.
- ``energy_per_token_out_of_bounds``: energy per output token is not finite or is <= 0 (e.g. a
  counter that did not move), or exceeds the physical ceiling
  ``power_limit_w x window_s / output_tokens x ENERGY_CEILING_MARGIN`` (1.05) when the power limit is
  known: the boards cannot draw more than their limit for the whole window (the 5 % margin covers the
  limit being enforced on an average and the counter edges).
  ``power_limit_w`` is the sum of the limits of every GPU whose energy is counted.
- ``energy_incomplete``: the energy counter delta of at least one GPU in at least one measured window
  is unknown (a read failed after its retries, the GPU was lost, or the counter went backwards;
  docs/reliability/nvml-faults.md). The run's gross energy, J/token and the affected cycles' energy
  are then null, and the energy intervals rest on the other cycles only: the run measured less than
  it was asked to, even where a figure is shown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Prefix of the MLflow tag of each flag: ``llem.quality.<name>``.
TAG_PREFIX = "llem.quality."

#: Shortest window, in energy-counter updates, whose energy is not dominated by counter quantisation.
MIN_COUNTER_UPDATES = 10
#: Shortest window when steady state was requested (ML.ENERGY practice), seconds.
STEADY_STATE_MIN_WINDOW_S = 30.0
#: Largest temperature rise over the window (last minus first valid sample), degrees Celsius.
MAX_TEMPERATURE_RISE_C = 10.0
#: Largest change of idle power (after vs before), as a fraction of the before value ...
MAX_IDLE_DRIFT_FRACTION = 0.10
#: ... and in watts; the flag needs both to be exceeded.
MAX_IDLE_DRIFT_W = 5.0
#: Margin over power limit x window / tokens before energy per token is called impossible.
ENERGY_CEILING_MARGIN = 1.05

#: NVML clocks-event-reason bits that mean a real slowdown, with their names.
THROTTLE_SLOWDOWN_REASONS: dict[int, str] = {
    0x4: "SW power cap",
    0x8: "HW slowdown",
    0x20: "SW thermal slowdown",
    0x40: "HW thermal slowdown",
    0x80: "HW power brake slowdown",
}
#: The SW power cap bit, and the share of window samples it must reach to fire the flag.
SW_POWER_CAP = 0x4
SW_POWER_CAP_MIN_FRACTION = 0.05
#: Bitmask of ``THROTTLE_SLOWDOWN_REASONS`` (0xEC).
THROTTLE_SLOWDOWN_BITS = sum(THROTTLE_SLOWDOWN_REASONS)

#: Every rule's name, in the order ``evaluate`` runs them.
RULE_NAMES: tuple[str, ...] = (
    "net_below_uncertainty",
    "short_window",
    "throttling",
    "temperature_drift",
    "other_processes",
    "idle_drift",
    "energy_per_token_out_of_bounds",
    "energy_incomplete",
)


@dataclass(frozen=True)
class QualityFlag:
    """A rule that fired: its name (MLflow tag ``llem.quality.<name>``) and a plain-language message."""

    name: str
    message: str


@dataclass(frozen=True, kw_only=True)
class QualityInputs:
    """Plain numbers the rules read. None means unknown (that rule does not fire); units in the names."""

    window_s: float  # duration of the measured window
    output_tokens: int  # generated tokens in the window
    net_j: float | None = None  # gross - idle x window, summed over GPUs
    net_uncertainty_j: float | None = None  # e.g. the edge uncertainty of the counter
    counter_update_s: float = 0.1  # period of the NVML energy counter
    throttle_reasons: list[int | None] = field(default_factory=list)  # per window sample that has a reading
    temperatures_c: list[float | None] = field(default_factory=list)  # one GPU's window readings, in order
    idle_before_w: float | None = None  # idle power measured before the window
    idle_after_w: float | None = None  # idle power measured after the window
    other_processes: int | None = None  # most other compute processes one sample saw (count - 1)
    energy_per_token_j: float | None = None
    power_limit_w: float | None = None  # sum over the GPUs whose energy is counted
    steady_state_requested: bool = False
    unknown_gpu_windows: int = 0  # (GPU, measured window) pairs whose counter delta is unknown
    gpu_windows: int = 0  # (GPU, measured window) pairs in all


def check_net_below_uncertainty(net_j: float | None, net_uncertainty_j: float | None) -> QualityFlag | None:
    """Fires when ``|net_j| < net_uncertainty_j``."""
    if net_j is None or net_uncertainty_j is None or abs(net_j) >= net_uncertainty_j:
        return None
    return QualityFlag(
        "net_below_uncertainty",
        f"Net energy ({net_j:.3f} J) is smaller than its uncertainty (+-{net_uncertainty_j:.3f} J): "
        "it cannot be told apart from zero. Report gross energy or measure a longer window.",
    )


def check_short_window(
    window_s: float, counter_update_s: float, steady_state_requested: bool
) -> QualityFlag | None:
    """Fires when ``window_s < 10 x counter_update_s``, or ``< 30 s`` when steady state was requested."""
    min_s = MIN_COUNTER_UPDATES * counter_update_s
    if window_s < min_s:
        return QualityFlag(
            "short_window",
            f"The measured window lasted {window_s:.3f} s, under {MIN_COUNTER_UPDATES} energy counter "
            f"updates ({min_s:.3f} s): counter quantisation dominates the energy.",
        )
    if steady_state_requested and window_s < STEADY_STATE_MIN_WINDOW_S:
        return QualityFlag(
            "short_window",
            f"Steady state was requested but the measured window lasted {window_s:.3f} s, under "
            f"{STEADY_STATE_MIN_WINDOW_S:.0f} s (ML.ENERGY practice).",
        )
    return None


def check_throttling(throttle_reasons: Sequence[int | None]) -> QualityFlag | None:
    """Fires on any hardware/thermal slowdown bit, or on SW power cap in >= 5% of the samples read."""
    known = [mask for mask in throttle_reasons if mask is not None]
    counts: dict[int, int] = {}
    for mask in known:
        for bit in THROTTLE_SLOWDOWN_REASONS:
            if mask & bit:
                counts[bit] = counts.get(bit, 0) + 1
    sustained = SW_POWER_CAP_MIN_FRACTION * len(known)
    if not any(bit != SW_POWER_CAP or n >= sustained for bit, n in counts.items()):
        return None
    seen = ", ".join(
        f"{THROTTLE_SLOWDOWN_REASONS[bit]} (0x{bit:x}) in {n} of {len(known)} samples"
        for bit, n in sorted(counts.items())
    )
    return QualityFlag("throttling", f"The GPU slowed its clocks during the window: {seen}.")


def check_temperature_drift(temperatures_c: Sequence[float | None]) -> QualityFlag | None:
    """Fires when the last valid temperature exceeds the first by more than 10 degC."""
    valid = [t for t in temperatures_c if t is not None and math.isfinite(t)]
    if len(valid) < 2:
        return None
    rise_c = valid[-1] - valid[0]
    if rise_c <= MAX_TEMPERATURE_RISE_C:
        return None
    return QualityFlag(
        "temperature_drift",
        f"GPU temperature rose by {rise_c:.1f} degC over the window ({valid[0]:.1f} -> {valid[-1]:.1f}), "
        f"more than {MAX_TEMPERATURE_RISE_C:.0f} degC: the GPU was not thermally steady.",
    )


def check_other_processes(other_processes: int | None) -> QualityFlag | None:
    """Fires when ``other_processes > 0`` (NVML's process count less this process, see the docstring)."""
    if other_processes is None or other_processes <= 0:
        return None
    return QualityFlag(
        "other_processes",
        f"NVML listed up to {other_processes} compute process(es) besides this one on a measured GPU "
        "during the window (processes listed minus this process); the energy counter is per board, so "
        "their energy is included. Run on GPUs no other process uses (`nvidia-smi`).",
    )


def check_idle_drift(idle_before_w: float | None, idle_after_w: float | None) -> QualityFlag | None:
    """Fires when idle power after differs from before by > 10 % of before AND by > 5 W."""
    if idle_before_w is None or idle_after_w is None:
        return None
    drift_w = abs(idle_after_w - idle_before_w)
    if drift_w <= MAX_IDLE_DRIFT_FRACTION * abs(idle_before_w) or drift_w <= MAX_IDLE_DRIFT_W:
        return None
    return QualityFlag(
        "idle_drift",
        f"Idle power changed from {idle_before_w:.1f} W before the window to {idle_after_w:.1f} W after "
        f"(more than {MAX_IDLE_DRIFT_FRACTION * 100:.0f} % and {MAX_IDLE_DRIFT_W:.0f} W): "
        "the baseline behind net energy was not stable.",
    )


def check_energy_per_token(
    energy_per_token_j: float | None, power_limit_w: float | None, window_s: float, output_tokens: int
) -> QualityFlag | None:
    """Fires when J/token is not finite or <= 0, or above power limit x window / tokens x 1.05."""
    if energy_per_token_j is None:
        return None
    if not math.isfinite(energy_per_token_j) or energy_per_token_j <= 0:
        return QualityFlag(
            "energy_per_token_out_of_bounds",
            f"Energy per output token is {energy_per_token_j} J; it must be a positive number. If an NVML "
            "read failed, the warnings name each GPU and window left out of the energy.",
        )
    if power_limit_w is None or output_tokens <= 0 or window_s <= 0:
        return None
    ceiling_j = power_limit_w * window_s / output_tokens * ENERGY_CEILING_MARGIN
    if energy_per_token_j <= ceiling_j:
        return None
    return QualityFlag(
        "energy_per_token_out_of_bounds",
        f"Energy per output token ({energy_per_token_j:.6g} J) is above the physical ceiling "
        f"{ceiling_j:.6g} J (power limit {power_limit_w:.1f} W x {window_s:.3f} s / {output_tokens} "
        f"tokens x {ENERGY_CEILING_MARGIN}): the boards cannot draw more than their limit.",
    )


def check_energy_incomplete(unknown_gpu_windows: int, gpu_windows: int) -> QualityFlag | None:
    """Fires when the counter delta of any GPU in any measured window is unknown."""
    if unknown_gpu_windows <= 0:
        return None
    of = f" of {gpu_windows}" if gpu_windows >= unknown_gpu_windows else ""
    return QualityFlag(
        "energy_incomplete",
        f"The energy counter delta of {unknown_gpu_windows}{of} (GPU, measured window) pair(s) is unknown "
        "(an NVML read failed, a GPU was lost or a counter went backwards): total energy, J/token and "
        "the energy of the affected cycles are null, and energy intervals rest on the other cycles only. "
        "The warnings name each GPU and window.",
    )


def evaluate(inputs: QualityInputs) -> list[QualityFlag]:
    """Run every rule on ``inputs``; the flags that fired, in ``RULE_NAMES`` order ([] when clean)."""
    results = [
        check_net_below_uncertainty(inputs.net_j, inputs.net_uncertainty_j),
        check_short_window(inputs.window_s, inputs.counter_update_s, inputs.steady_state_requested),
        check_throttling(inputs.throttle_reasons),
        check_temperature_drift(inputs.temperatures_c),
        check_other_processes(inputs.other_processes),
        check_idle_drift(inputs.idle_before_w, inputs.idle_after_w),
        check_energy_per_token(
            inputs.energy_per_token_j, inputs.power_limit_w, inputs.window_s, inputs.output_tokens
        ),
        check_energy_incomplete(inputs.unknown_gpu_windows, inputs.gpu_windows),
    ]
    return [flag for flag in results if flag is not None]


def mlflow_tags(flags: Sequence[QualityFlag]) -> dict[str, str]:
    """MLflow tags of the flags that fired: ``llem.quality.<name>`` -> message."""
    return {TAG_PREFIX + flag.name: flag.message for flag in flags}
