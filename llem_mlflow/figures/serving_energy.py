"""Energy of a server-scenario window whose edges are known only after the load: the energy counter at any
instant between two reads, by linear interpolation of the reads polled during the cycle.

The counter itself advances about every 100 ms (``COUNTER_UPDATE_S``), so a value between two reads is
uncertain by up to one update's energy at each edge; ``edge_uncertainty_j`` states it as the window's
mean power times one update per edge. The cycle's whole window needs none of this: its edges are reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from llem_mlflow.figures.serving import net_interval_energy, scale_to_total
from llem_mlflow.measure.counters import CounterMark
from llem_mlflow.measure.trace import PowerTrace

#: Seconds between two updates of the NVML energy counter on the GPUs measured so far (H100, H200).
COUNTER_UPDATE_S = 0.1
#: Length of the intervals per-request energy is charged over.
INTERVAL_S = 0.1


def counter_at(marks: Sequence[CounterMark], gpu: int, at_s: float) -> float | None:
    """GPU ``gpu``'s counter (J) at ``at_s``, interpolated between the reads around it; None when
    ``at_s`` is outside the reads or a read around it failed for that GPU."""
    known = [(m.at_s, m.energy_j[gpu]) for m in marks if gpu in m.energy_j]
    for (t0, e0), (t1, e1) in zip(known, known[1:], strict=False):
        if t0 <= at_s <= t1:
            return e0 if t1 == t0 else e0 + (e1 - e0) * (at_s - t0) / (t1 - t0)
    return None


def span_energy_j(
    marks: Sequence[CounterMark], gpus: Sequence[int], start_s: float, end_s: float
) -> float | None:
    """Gross energy of every GPU in ``gpus`` over [start_s, end_s]; None when one GPU's is unknown."""
    total = 0.0
    for gpu in gpus:
        a, b = counter_at(marks, gpu, start_s), counter_at(marks, gpu, end_s)
        if a is None or b is None or b < a:
            return None
        total += b - a
    return total


def edge_uncertainty_j(gross_j: float, duration_s: float) -> float:
    """One counter update at each of the two edges, at the window's mean power."""
    return 2 * COUNTER_UPDATE_S * gross_j / duration_s if duration_s > 0 else 0.0


def interval_edges(start_s: float, end_s: float, step_s: float = INTERVAL_S) -> list[float]:
    """``start_s``, ``start_s + step_s``, ... and exactly ``end_s`` (the last interval may be shorter)."""
    n = max(1, math.ceil((end_s - start_s) / step_s - 1e-9))
    return [start_s + i * step_s for i in range(n)] + [end_s]


def interval_net_j(
    trace: PowerTrace, idle_w: dict[int, float], edges: Sequence[float], net_total_j: float
) -> list[float]:
    """Each interval's net energy: the trace's shape above each GPU's idle power, summed over GPUs and
    scaled so the intervals add up to ``net_total_j`` (the counter's net energy stays the truth)."""
    weights = [0.0] * (len(edges) - 1)
    for gpu, idle in idle_w.items():
        times, powers = list(trace.times_s(gpu)), list(trace.powers_w(gpu))
        if not times:
            continue
        for i, joules in enumerate(net_interval_energy(times, powers, idle, edges)):
            weights[i] += joules
    return scale_to_total(weights, net_total_j)
