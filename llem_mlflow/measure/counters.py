"""Energy counter windows: CUDA-synced counter reads at window edges and the deltas between them.

Energy is the delta of NVML's cumulative energy counter read at the two edges of a window (as Zeus
does). Edge order (``measure_window``)::

    sync(); read counters; start_s = clock(); body(); sync(); end_s = clock(); read counters

Syncing first makes queued GPU work from before the window land before the first read, and work of
the body land before the last read. The timestamps sit on the inner side of the counter reads, so
``[start_s, end_s]`` is exactly the time the body (plus its final sync) ran, and the counter span
covers it with one read's cost (~3-4 ms per GPU) of idle-ish margin on each side, smaller than the
100 ms update step. Counters are read in the same device order at both edges, so each GPU's span is
offset equally. ``read_start`` / ``read_mark`` take one edge each (steady state marks every batch edge).

NVML faults (docs/reliability/nvml-faults.md): a counter read that fails is retried (``READ_ATTEMPTS``
tries, a few ms apart; a lost GPU is not retried). A GPU whose delta cannot be taken (a read still
failing, a lost GPU, a counter that went backwards) raises ``DeviceError`` by default; with
``allow_unknown`` (the experiment) it goes to ``CounterWindow.unknown`` instead. A backwards step that
is consistent with the counter's 2**64 mJ wrap is taken across the wrap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from llem_mlflow.errors import DeviceError
from llem_mlflow.measure.device import DeviceLostError
from llem_mlflow.protocols import GpuDevice

T = TypeVar("T")

#: One counter read at a window edge is tried this often; the sleeps between tries (seconds).
READ_ATTEMPTS = 3
RETRY_SLEEPS_S = (0.002, 0.005)
#: NVML's total-energy counter is an unsigned 64-bit count of millijoules: it wraps at 2**64 mJ.
COUNTER_WRAP_J = 2**64 / 1000
#: No board draws more: a delta taken across the wrap above this x (window + 1 s) is not a wrap.
MAX_BOARD_POWER_W = 2000.0


@dataclass(frozen=True)
class CounterWindow:
    """Counter deltas over one window; ``energy_j`` is keyed by CUDA index; times are Unix epoch seconds.

    ``unknown``: GPUs whose delta could not be taken (a read failed, the GPU was lost, the counter went
    backwards), with the reason; they have no entry in ``energy_j``. ``wrapped``: GPUs whose delta was
    taken across the counter's 2**64 mJ wrap.
    """

    start_s: float
    end_s: float
    energy_j: dict[int, float]
    unknown: dict[int, str] = field(default_factory=dict)
    wrapped: tuple[int, ...] = ()

    @property
    def duration_s(self) -> float:
        """Length of the window in seconds."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class CounterMark:
    """Counters read at a CUDA-synced point inside a window: ``at_s`` is taken before the read.

    ``failed``: GPUs whose counter could not be read (after ``READ_ATTEMPTS`` tries), with the reason.
    """

    at_s: float
    energy_j: dict[int, float]
    failed: dict[int, str] = field(default_factory=dict)


def _read_energy(device: GpuDevice) -> tuple[float | None, str | None]:
    """(joules, None), or (None, why) once ``READ_ATTEMPTS`` tries failed; a lost GPU is not retried."""
    error: DeviceError | None = None
    for attempt in range(READ_ATTEMPTS):
        try:
            return device.energy_j(), None
        except DeviceLostError as e:
            return None, str(e)
        except DeviceError as e:
            error = e
        if attempt < len(RETRY_SLEEPS_S):
            time.sleep(RETRY_SLEEPS_S[attempt])
    return None, f"{READ_ATTEMPTS} attempts failed, the last with: {error}"


def _read_counters(devices: Sequence[GpuDevice]) -> tuple[dict[int, float], dict[int, str]]:
    """Every device's counter in order: (joules by CUDA index, reasons of those that failed)."""
    values: dict[int, float] = {}
    failed: dict[int, str] = {}
    for device in devices:
        value, reason = _read_energy(device)
        if value is None:
            failed[device.info.cuda_index] = reason or "unknown error"
        else:
            values[device.info.cuda_index] = value
    return values, failed


def _delta(before: float, after: float, span_s: float) -> tuple[float | None, str | None, bool]:
    """(joules, None, wrapped) or (None, why, False) for one GPU's two counter readings."""
    if after >= before:
        return after - before, None, False
    across = COUNTER_WRAP_J - before + after
    if across <= MAX_BOARD_POWER_W * (span_s + 1.0):
        return across, None, True
    return None, f"its energy counter went backwards by {before - after:.3f} J", False


def _window(start: CounterMark, end: CounterMark, allow_unknown: bool) -> CounterWindow:
    """The window from ``start`` to ``end``; GPUs without a usable delta go to ``unknown``."""
    energy_j: dict[int, float] = {}
    unknown: dict[int, str] = {}
    wrapped: list[int] = []
    for gpu in dict.fromkeys([*start.energy_j, *start.failed, *end.energy_j, *end.failed]):
        if gpu not in start.energy_j or gpu not in end.energy_j:
            edge, failed = ("start", start.failed) if gpu not in start.energy_j else ("end", end.failed)
            unknown[gpu] = f"its energy counter could not be read at the {edge} edge: {failed.get(gpu)}"
            continue
        delta_j, reason, across = _delta(start.energy_j[gpu], end.energy_j[gpu], end.at_s - start.at_s)
        if delta_j is None:
            unknown[gpu] = reason or "unknown error"
        else:
            energy_j[gpu] = delta_j
            if across:
                wrapped.append(gpu)
    if unknown and not allow_unknown:
        gpu, reason = next(iter(unknown.items()))
        raise DeviceError(
            f"GPU {gpu}: {reason} (counter reset, driver reload, GPU reset or a lost GPU). Re-run the "
            "experiment; if it repeats, check `nvidia-smi -q -d POWER` and the kernel log."
        )
    return CounterWindow(start.at_s, end.at_s, energy_j, unknown, tuple(wrapped))


def measure_window(
    devices: Sequence[GpuDevice],
    sync: Callable[[], None],
    body: Callable[[], T],
    clock: Callable[[], float] = time.time,
    *,
    allow_unknown: bool = False,
) -> tuple[T, CounterWindow]:
    """Run ``body`` between two CUDA-synced counter reads; return its result and the counter window.

    A GPU whose delta cannot be taken (read failed after retries, GPU lost, counter went backwards and
    not across its wrap) is put in ``CounterWindow.unknown`` with ``allow_unknown``, else raises
    ``DeviceError``; a zero delta passes (see ``energy_warnings``).
    """
    sync()
    before = _read_counters(devices)
    start_s = clock()
    out = body()
    sync()
    end_s = clock()
    after = _read_counters(devices)
    return out, _window(CounterMark(start_s, *before), CounterMark(end_s, *after), allow_unknown)


def _checked(mark: CounterMark, allow_unknown: bool) -> CounterMark:
    """``mark``, or ``DeviceError`` when a read failed and failures are not allowed."""
    if mark.failed and not allow_unknown:
        gpu, reason = next(iter(mark.failed.items()))
        raise DeviceError(f"GPU {gpu}: its energy counter could not be read: {reason}")
    return mark


def read_start(
    devices: Sequence[GpuDevice],
    sync: Callable[[], None],
    clock: Callable[[], float] = time.time,
    *,
    allow_unknown: bool = False,
) -> CounterMark:
    """Sync, read every counter, take the time (the start-edge order of ``measure_window``).

    A read still failing after retries raises ``DeviceError``, or with ``allow_unknown`` is kept in
    ``CounterMark.failed`` (the windows from this mark then have that GPU in ``unknown``).
    """
    sync()
    energy_j, failed = _read_counters(devices)
    return _checked(CounterMark(at_s=clock(), energy_j=energy_j, failed=failed), allow_unknown)


def read_mark(
    devices: Sequence[GpuDevice],
    sync: Callable[[], None],
    clock: Callable[[], float] = time.time,
    *,
    allow_unknown: bool = False,
) -> CounterMark:
    """Sync, take the time, read every counter (the end-edge order of ``measure_window``).

    Failed reads as in ``read_start``.
    """
    sync()
    at_s = clock()
    energy_j, failed = _read_counters(devices)
    return _checked(CounterMark(at_s=at_s, energy_j=energy_j, failed=failed), allow_unknown)


def window_between(start: CounterMark, end: CounterMark, *, allow_unknown: bool = False) -> CounterWindow:
    """The counter window from one mark to a later one (unknown deltas as in ``measure_window``)."""
    return _window(start, end, allow_unknown)


def measure_idle(
    devices: Sequence[GpuDevice],
    sync: Callable[[], None],
    duration_s: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    *,
    allow_unknown: bool = False,
) -> CounterWindow:
    """Counter window over ``duration_s`` of sleeping (model loaded, CUDA context alive), same edges."""
    _, window = measure_window(devices, sync, lambda: sleep(duration_s), clock, allow_unknown=allow_unknown)
    return window
