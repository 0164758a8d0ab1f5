"""Idle settle: wait, with a cap, until the idle power of the GPUs stops drifting.

Right after work an H200 idles at ~125 W and drifts down towards ~79 W over the following seconds
to minutes; a baseline taken during that drift is too high and makes net energy too small. With
``idle_settle_max_s > 0`` the run waits before the idle baseline. The rule:

    read the summed board power every ``POLL_S`` (0.1 s); once ``2 x SPAN_S`` (2 x 2 s) are read,
    settled when the mean of the last 2 s differs from the mean of the 2 s before it by less than
    max(``DRIFT_W`` (1 W), ``DRIFT_PCT`` (1%) of it); otherwise give up at ``idle_settle_max_s``
    and say so (the baseline is then taken anyway, and the result records ``settled: false``).

Pure Python: the power reader, clock and sleep are injected.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

POLL_S = 0.1
SPAN_S = 2.0
DRIFT_W = 1.0
DRIFT_PCT = 1.0
RULE = (
    f"power read every {POLL_S:g} s; settled when the mean of the last {SPAN_S:g} s is within "
    f"max({DRIFT_W:g} W, {DRIFT_PCT:g}%) of the {SPAN_S:g} s before it"
)


class IdleSettle(BaseModel):
    """What the idle settle did before the baseline."""

    model_config = ConfigDict(extra="forbid")

    waited_s: float
    settled: bool
    max_s: float
    first_w: float | None = None  # mean power of the first 2 s read
    last_w: float | None = None  # mean power of the last 2 s read
    rule: str = RULE


def settle_idle(
    power_w: Callable[[], float],
    max_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> IdleSettle:
    """Poll ``power_w`` until settled (see the module docstring) or ``max_s`` has passed."""
    per_span = round(SPAN_S / POLL_S)
    readings: list[float] = []
    start = clock()
    while True:
        readings.append(power_w())
        settled = len(readings) >= 2 * per_span and _flat(readings[-2 * per_span :], per_span)
        waited = clock() - start
        if settled or waited >= max_s:
            break
        sleep(POLL_S)
    return IdleSettle(
        waited_s=waited,
        settled=settled,
        max_s=max_s,
        first_w=statistics.fmean(readings[:per_span]),
        last_w=statistics.fmean(readings[-per_span:]),
    )


def _flat(window: list[float], per_span: int) -> bool:
    before = statistics.fmean(window[:per_span])
    last = statistics.fmean(window[per_span:])
    return abs(last - before) < max(DRIFT_W, DRIFT_PCT / 100 * abs(before))
