"""``track``: measure the GPU energy, time and power trace of any block of code into MLflow.

    with llem_mlflow.run.track("train-epoch"):
        train_one_epoch()

    @llem_mlflow.run.track("serve-batch")
    def serve(batch): ...

Same method as an experiment's window (``energy.measure_window``): sync the GPUs, read the NVML energy
counters, run the block, sync again, read them again; a power sampler runs alongside for the trace. The
GPUs are the CUDA devices the process sees (``gpus``: their CUDA indices; default all), matched to NVML
by UUID; without torch imported, every GPU NVML lists. Syncing waits for this process's queued CUDA work
when torch has initialised CUDA; work of other processes (an inference server) is not waited for, so
call ``track`` around a block whose work has finished when it returns (e.g. a blocking request).

On exit the figures are logged to the active MLflow run (a new run named ``name`` when there is none):
metrics ``track/<name>/energy_j``, ``.../duration_s``, ``.../avg_power_w``, ``.../gpu{i}_j`` and the
power history ``track/<name>/power/gpu{i}_w`` (thinned like a run's), tag ``track/<name>/status``
(``ok``, ``failed`` when the block raised, ``energy_incomplete`` when a GPU's energy is unknown) and,
when energy is not (fully) measured, tag ``track/<name>/energy`` saying why.

Faults never hide the block's outcome nor leak the sampler thread or the NVML session. Without NVML (no
GPU) the time is still measured and energy is null, with a warning. A counter read that still fails
after retries (``energy.READ_ATTEMPTS``) at either edge, or a lost GPU, makes that GPU's energy (and the
total) null with a warning; a failure while starting the measurement stops the sampler, shuts NVML down
and runs the block with its time measured only. The block's exceptions propagate unchanged, and what
was measured until then is still logged, tagged ``track/<name>/status = failed``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from llem_mlflow.measure import energy
from llem_mlflow.measure.sampler import PowerSampler
from llem_mlflow.measure.tracked import Tracked as Tracked  # its old home: run.track.Tracked still works
from llem_mlflow.protocols import CudaDeviceId, GpuDevice

log = logging.getLogger(__name__)


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
        if not sampling_interval_s > 0:
            raise ValueError(
                f"track() needs sampling_interval_s > 0, got {sampling_interval_s}; use e.g. 0.1"
            )
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
        tracked = Tracked(self.name)
        if warning:
            tracked.warn(warning)
            tracked.energy_note = warning.removeprefix("energy ")
        state = _Running(tracked, list(devices), close)
        try:
            state.begin(self._sync, self._interval_s)
        except Exception as exc:  # a measurement fault must not stop the block: time it only
            state.abandon(f"starting the measurement failed: {exc}")
        except BaseException:
            state.close()
            raise
        self._state = state
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
        for message in state.tracked.warnings:
            log.warning("track(%r): %s", self.name, message)
        if self._log:
            try:
                self._logger(state.tracked)
            except Exception as error:  # logging must never hide the block's own outcome
                log.warning("track(%r): logging to MLflow failed: %s", self.name, error)
        from llem_mlflow.tracking.traces import annotate_active_span

        annotate_active_span(state.tracked)  # the active MLflow trace span, if any: never raises


@dataclass
class _Running:
    """One measurement in progress: its GPUs, the NVML session's release, the sampler, the start mark."""

    tracked: Tracked
    devices: list[GpuDevice]
    release: Callable[[], None]  # shuts NVML down
    sampler: PowerSampler | None = None
    start: energy.CounterMark | None = None
    released: bool = False

    def begin(self, sync: Callable[[], None], interval_s: float) -> None:
        """Start the sampler and read the counters at the start edge (failed reads are kept, not raised)."""
        if self.devices:
            self.sampler = PowerSampler(self.devices, interval_s)
            self.sampler.start()
        self.start = energy.read_start(self.devices, sync, allow_unknown=True)
        self.tracked.start_s = self.start.at_s

    def abandon(self, reason: str) -> None:
        """Energy cannot be measured: stop the sampler, shut NVML down, time the block only."""
        self.tracked.start_s = self.tracked.start_s or time.time()
        self._unknown(reason)
        self.close()
        self.devices, self.start = [], None

    def finish(self, sync: Callable[[], None], failed: bool) -> None:
        """Read the counters at the end edge; a GPU whose delta is unknown gets null energy, never raises."""
        self.tracked.failed = failed
        if self.start is None:  # abandoned at the start
            self.tracked.end_s = time.time()
            return
        try:
            end = energy.read_mark(self.devices, sync, allow_unknown=True)
        except Exception as exc:  # e.g. the sync failed: the block's outcome must still come through
            self.tracked.end_s = time.time()
            self._unknown(f"reading the counters at the block's end failed: {exc}")
            return
        self.tracked.end_s = end.at_s
        if self.devices:
            window = energy.window_between(self.start, end, allow_unknown=True)
            gpus = [d.info.cuda_index for d in self.devices]
            self.tracked.energy_j = {gpu: window.energy_j.get(gpu) for gpu in gpus}
            for message in energy.fault_warnings("the tracked block", window, "its energy is null"):
                self.tracked.warn(message)
            if window.unknown:
                reasons = "; ".join(f"GPU {gpu}: {why}" for gpu, why in window.unknown.items())
                self.tracked.energy_note = f"incomplete: {reasons}"

    def _unknown(self, reason: str) -> None:
        """Every GPU's energy is unknown for ``reason`` (without GPUs only the warning: nothing to null)."""
        if not self.devices:
            self.tracked.warn(reason)
            return
        self.tracked.warn(f"energy not measured: {reason}")
        self.tracked.energy_j = {d.info.cuda_index: None for d in self.devices}
        self.tracked.energy_note = f"not measured: {reason}"

    def close(self) -> None:
        """Stop the sampler (keeping its trace) and shut NVML down, once; failures only warn."""
        sampler, self.sampler = self.sampler, None
        if sampler is not None:
            try:
                self.tracked.trace = sampler.stop()
            except Exception as exc:
                self.tracked.warn(f"stopping the power sampler failed: {exc}")
            for message in sampler.warnings:
                self.tracked.warn(message)
        if not self.released:
            self.released = True
            try:
                self.release()
            except Exception as exc:
                self.tracked.warn(f"shutting NVML down failed: {exc}")


def _open_nvml(gpus: Sequence[int] | None) -> tuple[Sequence[GpuDevice], Callable[[], None], str | None]:
    """NVML devices of the CUDA devices ``gpus`` (all when None); ``([], no-op, why)`` without NVML."""
    from llem_mlflow.errors import DeviceError
    from llem_mlflow.measure.device import try_open_session

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
    from llem_mlflow.tracking.tracked_blocks import log_tracked

    log_tracked(tracked)
