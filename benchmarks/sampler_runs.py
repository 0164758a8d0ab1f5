"""The records of the sampler overhead benchmark (``sampler_overhead.py``), shared by its runner and its
statistics (``sampler_stats.py``): a ``Condition`` (one sampler setting run against no sampler) and a
``Run`` (one timed run of a workload)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llem_mlflow.measure.power_buffer import BUFFER_READ_PERIOD_S


@dataclass(frozen=True)
class Condition:
    """One sampler setting run against no sampler: ``name`` keys it in a block, ``mode`` is the sampler's."""

    name: str
    mode: str
    buffer_period_s: float = BUFFER_READ_PERIOD_S


@dataclass
class Run:
    """One timed run of a workload; ``mode`` None: no sampler."""

    mode: str | None
    wall_s: float
    process_cpu_s: float
    sampler_cpu_s: float | None = None
    samples: int | None = None
    sources: dict[int, str] = field(default_factory=dict)
    buffer_period_s: float | None = None
    buffer_reads: int | None = None  # reads of the buffers by the sampler's loop while the work ran
