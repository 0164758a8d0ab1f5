"""``track``: measure the GPU energy, time and power trace of any block of code into MLflow.

    with llem_mlflow.track("train-epoch"):
        train_one_epoch()

    @llem_mlflow.track("serve-batch")
    def serve(batch): ...

Same method as an experiment's window (``energy.measure_window``): sync the GPUs, read the NVML energy
counters, run the block, sync again, read them again; a power sampler runs alongside for the trace. The
GPUs are the CUDA devices the process sees (``gpus``: their CUDA indices; default all), matched to NVML
by UUID; without torch imported, every GPU NVML lists. Syncing waits for this process's queued CUDA work
when torch has initialised CUDA; work of other processes (an inference server) is not waited for, so
call ``track`` around a block whose work has finished when it returns (e.g. a blocking request).

On exit the figures are logged to the active MLflow run (a new run named ``name`` when there is none):
metrics ``track/<name>/energy_j``, ``.../duration_s``, ``.../avg_power_w``, ``.../gpu{i}_j`` and the
power history ``track/<name>/power/gpu{i}_w`` (thinned like a run's). Without NVML (no GPU) the time
is still measured and energy is null, with a warning. The block's exceptions propagate unchanged, and
what was measured until then is still logged, tagged ``track/<name>/status = failed``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from llem_mlflow import energy
from llem_mlflow.protocols import CudaDeviceId, GpuDevice
from llem_mlflow.sampler import PowerSampler
from llem_mlflow.trace import PowerTrace

log = logging.getLogger(__name__)


@dataclass
class Tracked:
    """What one tracked block measured (energies in J, keyed by CUDA index; null without NVML)."""

    name: str
    start_s: float = 0.0
    end_s: float = 0.0
    energy_j: dict[int, float] | None = None
    trace: PowerTrace | None = None
    failed: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """Seconds between the synced edges."""
        return self.end_s - self.start_s

    @property
    def total_energy_j(self) -> float | None:
        """Energy summed over the GPUs."""
        return None if self.energy_j is None else sum(self.energy_j.values())

    @property
    def avg_power_w(self) -> float | None:
        """Mean board power over the block (counter energy / duration), summed over the GPUs."""
        total = self.total_energy_j
        return None if total is None or self.duration_s <= 0 else total / self.duration_s


OpenGpus = Callable[[Sequence[int] | None], tuple[Sequence[GpuDevice], Callable[[], None], str | None]]
Logger = Callable[[Tracked], None]


class track(contextlib.ContextDecorator):  # noqa: N801 - used like a function: `with track(...)`
    """Measure the enclosed block (see the module docstring); usable as a decorator too."""

    def __init__(
        self,
        name: str,
        *,
        gpus: Sequence[int] | None = None,
        sampling_interval_s: float = 0.1,
        log_to_mlflow: bool = True,
        open_gpus: OpenGpus | None = None,
        sync: Callable[[], None] | None = None,
        logger: Logger | None = None,
    ) -> None:
        if not name.strip():
            raise ValueError("track() needs a name, such as 'train-epoch'")
        self.name = name
        self._gpus = gpus
        self._interval_s = sampling_interval_s
        self._log = log_to_mlflow
        self._open = open_gpus or _open_nvml
        self._sync = sync or _sync_cuda
        self._logger = logger or _log_to_mlflow
        self.result: Tracked | None = None
        self._state: _Running | None = None

    def _recreate_cm(self) -> track:  # a fresh measurement per decorated call
        return track(
            self.name, gpus=self._gpus, sampling_interval_s=self._interval_s, log_to_mlflow=self._log,
            open_gpus=self._open, sync=self._sync, logger=self._logger,
        )  # fmt: skip

    def __enter__(self) -> Tracked:
        devices, close, warning = self._open(self._gpus)
        tracked = Tracked(self.name, warnings=[warning] if warning else [])
        sampler = PowerSampler(devices, self._interval_s) if devices else None
        if sampler is not None:
            sampler.start()
        start = energy.read_start(devices, self._sync)
        tracked.start_s = start.at_s
        self._state = _Running(tracked, devices, close, sampler, start)
        self.result = tracked
        return tracked

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        try:
            state.finish(self._sync, failed=exc_type is not None)
        finally:
            state.close()
        if self._log:
            try:
                self._logger(state.tracked)
            except Exception as error:  # logging must never hide the block's own outcome
                log.warning("track(%r): logging to MLflow failed: %s", self.name, error)


@dataclass
class _Running:
    tracked: Tracked
    devices: Sequence[GpuDevice]
    release: Callable[[], None]  # shuts NVML down
    sampler: PowerSampler | None
    start: energy.CounterMark

    def finish(self, sync: Callable[[], None], failed: bool) -> None:
        end = energy.read_mark(self.devices, sync)
        self.tracked.end_s = end.at_s
        self.tracked.failed = failed
        if self.devices:
            self.tracked.energy_j = energy.window_between(self.start, end).energy_j
        if self.sampler is not None:
            self.tracked.trace = self.sampler.stop()
            self.tracked.warnings.extend(self.sampler.warnings)

    def close(self) -> None:
        if self.sampler is not None and self.tracked.trace is None:
            self.sampler.stop()
        self.release()


def _open_nvml(gpus: Sequence[int] | None) -> tuple[Sequence[GpuDevice], Callable[[], None], str | None]:
    """NVML devices of the CUDA devices ``gpus`` (all when None); ``([], no-op, why)`` without NVML."""
    from llem_mlflow.device import try_open_session
    from llem_mlflow.errors import DeviceError

    session, reason = try_open_session()
    if session is None:
        return [], lambda: None, f"energy not measured: {reason}"
    try:
        return session.devices_for(_cuda_ids(session, gpus)), session.close, None
    except DeviceError as exc:
        session.close()
        return [], lambda: None, f"energy not measured: {exc}"


def _cuda_ids(session: Any, gpus: Sequence[int] | None) -> list[CudaDeviceId]:
    """CUDA ids from torch when it is imported and sees GPUs, else NVML's own list in NVML order."""
    if "torch" in sys.modules:
        from llem_mlflow.backends.runtime import visible_cuda_ids

        ids = visible_cuda_ids()
        if ids:
            return [i for i in ids if gpus is None or i.cuda_index in gpus]
    infos = session.all_gpus()
    wanted = range(len(infos)) if gpus is None else gpus
    return [CudaDeviceId(i, infos[i].uuid, infos[i].pci_bus_id) for i in wanted if 0 <= i < len(infos)]


def _sync_cuda() -> None:
    """Wait for this process's queued CUDA work, when torch has started CUDA; else nothing to wait for."""
    if "torch" in sys.modules:
        from llem_mlflow.backends.runtime import synchronize_all

        synchronize_all()


def _log_to_mlflow(tracked: Tracked) -> None:
    from llem_mlflow.tracking import log_tracked

    log_tracked(tracked)
