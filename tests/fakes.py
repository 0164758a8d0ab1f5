"""Hand-written fakes of the seams in ``llem_mlflow.protocols``: FakeDevice (GpuDevice) and FakeBackend.

They script exact numbers so tests can assert exact energies and token counts, and they count calls
so tests can assert what was (not) read, e.g. that the sampler never reads the energy counter.
NVML faults are injected through the scripts (an exception in a scripted sequence is raised at that
read) or with ``FakeDevice.lose()`` (every later read fails as NVML's GPU-is-lost does).
``FakePowerBuffer`` is the driver's power sample buffer (a ring of timestamped mW samples), served by
``FakeDevice(power_buffer=...)`` and by ``FakeGpu(power_buffer=...)`` through ``FakeNvml``; without one,
both answer as a GPU that keeps no buffer.
``FakeNvml`` stands in for the pynvml module itself (``llem_mlflow.measure.device``); ``PoweredGpu`` is a
board whose counter integrates its power over wall time, so a run on it is physically plausible.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure.device import DeviceLostError, PowerBufferUnsupportedError
from llem_mlflow.protocols import (
    BatchStats,
    CudaDeviceId,
    GpuInfo,
    LoadedModel,
    ModelFacts,
    ModelShape,
    SlowReading,
)

Script = Iterable[float | BaseException] | Callable[[], float]


def _reader(script: float | Script, what: str) -> Callable[[], float]:
    """A callable that returns a constant, the next scripted value, or calls the given function.

    A scripted exception is raised at its turn (e.g. ``[10.0, DeviceError("Unknown Error"), 12.0]``).
    """
    if isinstance(script, (int, float)):
        value = float(script)
        return lambda: value
    if callable(script):
        return script
    values: Iterator[float] = iter(script)

    def next_value() -> float:
        try:
            value = next(values)
        except StopIteration:
            raise RuntimeError(
                f"FakeDevice {what} script exhausted: the code read it more often than scripted"
            ) from None
        if isinstance(value, BaseException):
            raise value
        return float(value)

    return next_value


class FakePowerBuffer:
    """A driver's power sample buffer: a ring of ``(timestamp_us, milliwatts)``, oldest out past ``capacity``.

    ``push`` adds samples; ``push_script`` adds one per scripted power (watts), ``spacing_us`` after the
    last (or from ``first_us``); ``fail_next`` makes the next reads raise the given errors in turn.
    ``FakePowerBuffer.live(power_w)`` fills itself with one sample every ``spacing_us`` of ``clock`` (Unix
    epoch time by default) up to the moment of each read, as a driver does. ``reads`` counts reads.
    """

    def __init__(self, samples: Iterable[tuple[int, int]] = (), capacity: int = 120) -> None:
        self._ring: deque[tuple[int, int]] = deque(samples, maxlen=capacity)
        self._lock = threading.Lock()
        self._failures: list[BaseException] = []
        self._live: tuple[Callable[[], float], float, int] | None = None  # clock, watts, spacing_us
        self.reads = 0

    @classmethod
    def live(
        cls,
        power_w: float,
        spacing_us: int = 20_000,
        capacity: int = 120,
        clock: Callable[[], float] = time.time,
    ) -> FakePowerBuffer:
        """A buffer that samples ``power_w`` every ``spacing_us`` of ``clock``, from now on."""
        buffer = cls(capacity=capacity)
        buffer._live = (clock, power_w, spacing_us)
        buffer._ring.append((int(clock() * 1e6), round(power_w * 1000)))
        return buffer

    def push(self, samples: Iterable[tuple[int, int]]) -> None:
        """Add ``(timestamp_us, milliwatts)`` samples, in one step (a concurrent read sees all or none)."""
        with self._lock:
            self._ring.extend(samples)

    def push_script(
        self, watts: Sequence[float], spacing_us: int = 20_000, first_us: int | None = None
    ) -> None:
        """One sample per scripted power (watts, stored as whole mW), ``spacing_us`` apart."""
        start = first_us if first_us is not None else self.newest_us() + spacing_us
        self.push((start + k * spacing_us, round(w * 1000)) for k, w in enumerate(watts))

    def newest_us(self) -> int:
        """The newest sample's timestamp (0 when empty)."""
        return self._ring[-1][0] if self._ring else 0

    def fail_next(self, *errors: BaseException) -> None:
        """The next reads raise these errors, one each, in order."""
        self._failures.extend(errors)

    def since(self, since_us: int) -> list[tuple[int, int]]:
        """The samples newer than ``since_us``, oldest first (a live buffer fills up to now first)."""
        with self._lock:
            self.reads += 1
            if self._failures:
                raise self._failures.pop(0)
            if self._live is not None:
                clock, power_w, spacing_us = self._live
                now_us, next_us = int(clock() * 1e6), self.newest_us() + spacing_us
                self._ring.extend((t, round(power_w * 1000)) for t in range(next_us, now_us + 1, spacing_us))
            return [s for s in self._ring if s[0] > since_us]


DEFAULT_SLOW = SlowReading(
    temperature_c=45.0, sm_clock_mhz=1980.0, utilization_pct=50.0, memory_used_b=1 << 30, throttle_reasons=0
)


class FakeDevice:
    """A GpuDevice with a scripted energy counter (joules) and power (watts); counts every read.

    After ``lose()``, energy and power reads raise ``DeviceLostError`` and slow readings are all None,
    as ``NvmlDevice`` behaves once NVML reports the GPU lost (reads are still counted).
    ``power_buffer`` serves ``power_samples`` (mW to W); None: the GPU keeps no buffer.
    """

    def __init__(
        self,
        cuda_index: int = 0,
        uuid: str = "GPU-fake-0",
        name: str = "Fake GPU",
        energy_script: Script = (),
        power_w: float | Script = 100.0,
        slow: SlowReading | Callable[[], SlowReading] = DEFAULT_SLOW,
        power_limit_w: float | None = 700.0,
        power_buffer: FakePowerBuffer | None = None,
    ) -> None:
        self.power_buffer = power_buffer
        self.buffer_reads = 0
        self._info = GpuInfo(
            cuda_index=cuda_index,
            nvml_index=cuda_index,
            name=name,
            uuid=uuid,
            pci_bus_id=f"00000000:{cuda_index + 0x19:02X}:00.0",
            memory_total_b=80 << 30,
            power_limit_w=power_limit_w,
            persistence_mode=True,
            compute_capability="9.0",
        )
        self._energy = _reader(energy_script, "energy")
        self._power = _reader(power_w, "power")
        self._slow = slow
        self.energy_reads = 0
        self.power_reads = 0
        self.slow_reads = 0
        self.lost = False

    @property
    def info(self) -> GpuInfo:
        """Static facts."""
        return self._info

    def lose(self) -> None:
        """From now on the GPU is lost (NVML_ERROR_GPU_IS_LOST)."""
        self.lost = True

    def _check_lost(self, what: str) -> None:
        if self.lost:
            raise DeviceLostError(f"Reading the {what} of GPU {self._info.cuda_index} failed: GPU is lost.")

    def energy_j(self) -> float:
        """The next scripted counter value."""
        self.energy_reads += 1
        self._check_lost("energy counter")
        return self._energy()

    def power_w(self) -> float:
        """The scripted power."""
        self.power_reads += 1
        self._check_lost("power")
        return self._power()

    def power_samples(self, since_us: int) -> list[tuple[int, float]]:
        """The buffer's samples newer than ``since_us``, in watts; unsupported without a buffer."""
        self.buffer_reads += 1
        self._check_lost("power sample buffer")
        if self.power_buffer is None:
            raise PowerBufferUnsupportedError("FakeDevice keeps no power sample buffer")
        return [(t_us, mw / 1000.0) for t_us, mw in self.power_buffer.since(since_us)]

    def slow_reading(self) -> SlowReading:
        """The scripted slow reading (a callable may raise to simulate NVML failures)."""
        self.slow_reads += 1
        if self.lost:
            return SlowReading(None, None, None, None, None)
        return self._slow() if callable(self._slow) else self._slow


SMALL_SHAPE = ModelShape(
    body_matmul_params=1_000_000, lm_head_params=64_000, n_layers=2, attn_dim=64, vocab_size=1000
)


FAKE_TOKENIZER = "fake whitespace tokenizer"


#: FakeBackend's default step timings (seconds): every batch reports this prefill and this decode step time.
FAKE_PREFILL_S = 0.004
FAKE_DECODE_STEP_S = 0.001


class FakeBackend:
    """A Backend with exact token counts: output = rows x (output_tokens_per_row or max_output_tokens).

    ``inspect()`` gives the shape's vocabulary and ``context_length``; ``events`` records the order of
    inspect / tokenize / load / generate calls (e.g. to assert that prompts are tokenized before loading).
    Step timings are scripted: every batch reports ``prefill_s`` and ``new_tokens - 1`` decode steps,
    each ``decode_step_s`` (a float), or taken in turn from ``decode_step_s`` (a sequence, cycled from
    its start in every batch); ``prefill_s=None`` reports an untimed backend (None and ``()``).
    """

    def __init__(
        self,
        output_tokens_per_row: int | None = None,
        device: str = "cpu",
        cuda_devices: Sequence[CudaDeviceId] = (),
        on_generate: Callable[[], None] | None = None,
        shape: ModelShape = SMALL_SHAPE,
        context_length: int | None = 1024,
        prefill_s: float | None = FAKE_PREFILL_S,
        decode_step_s: float | Sequence[float] = FAKE_DECODE_STEP_S,
    ) -> None:
        self.output_tokens_per_row = output_tokens_per_row
        self.prefill_s = prefill_s
        self.decode_step_s = decode_step_s
        self.device = device
        self.cuda_devices = list(cuda_devices)
        self.on_generate = on_generate
        self.shape = shape
        self.context_length = context_length
        self.events: list[str] = []
        self.load_calls = 0
        self.sync_calls = 0
        self.generate_calls: list[tuple[int, int]] = []  # (batch size, max_output_tokens)
        self._vocab: dict[str, int] = {}
        self._ids = itertools.count(1)

    def inspect(self) -> ModelFacts:
        """The shape's vocabulary and ``context_length``."""
        self.events.append("inspect")
        return ModelFacts(
            vocab_size=self.shape.vocab_size,
            context_length=self.context_length,
            config_source="shipped config",
        )

    def tokenizer_name(self) -> str:
        """The fake's one tokenizer."""
        return FAKE_TOKENIZER

    def load(self) -> LoadedModel:
        """A random-weight model on ``device`` (revision None, as for any random weights)."""
        self.events.append("load")
        self.load_calls += 1
        return LoadedModel(
            weights="random",
            precision="fp32",
            device=self.device,
            load_time_s=0.0,
            shape=self.shape,
            cuda_devices=list(self.cuda_devices),
        )

    def tokenize(self, prompts: list[str], max_input_tokens: int) -> list[list[int]]:
        """One id per whitespace-separated word (stable per word), truncated to ``max_input_tokens``."""
        self.events.append("tokenize")
        return [[self._id(word) for word in prompt.split()][:max_input_tokens] for prompt in prompts]

    def _id(self, word: str) -> int:
        if word not in self._vocab:
            self._vocab[word] = next(self._ids)
        return self._vocab[word]

    def generate(self, batch: list[list[int]], max_output_tokens: int) -> BatchStats:
        """Exact counts and scripted step timings; calls ``on_generate`` (e.g. to advance a fake clock)."""
        self.events.append("generate")
        self.generate_calls.append((len(batch), max_output_tokens))
        if self.on_generate is not None:
            self.on_generate()
        per_row = max_output_tokens if self.output_tokens_per_row is None else self.output_tokens_per_row
        return BatchStats(
            input_tokens=sum(len(row) for row in batch),
            output_tokens=len(batch) * per_row,
            padded_input_len=max((len(row) for row in batch), default=0),
            new_tokens=per_row,
            batch_size=len(batch),
            prefill_s=self.prefill_s if per_row > 0 else None,
            decode_step_s=self._decode_steps(per_row - 1) if self.prefill_s is not None else (),
            input_lens=tuple(len(row) for row in batch),
            output_lens=(per_row,) * len(batch),
        )

    def warmup_groups(self, cfg: ExperimentConfig, groups: list[list[list[int]]]) -> list[list[list[int]]]:
        """As the transformers fast path: with compile, the first batch of each batch size, in order."""
        if cfg.compile == "off":
            return []
        first: dict[int, list[list[int]]] = {}
        for group in groups:
            first.setdefault(len(group), group)
        return list(first.values())

    def _decode_steps(self, steps: int) -> tuple[float, ...]:
        if steps <= 0:
            return ()
        if isinstance(self.decode_step_s, (int, float)):
            return (float(self.decode_step_s),) * steps
        return tuple(float(s) for s in itertools.islice(itertools.cycle(self.decode_step_s), steps))

    def synchronize(self) -> None:
        """Counts calls."""
        self.sync_calls += 1

    def versions(self) -> dict[str, str | None]:
        """No real runtime behind the fake."""
        return {"torch": None, "transformers": None, "cuda_runtime": None}


# --- FakeNvml: the pynvml module, for NvmlSession / NvmlDevice (llem_mlflow.measure.device) -----------------


class RecordingBackend(FakeBackend):
    """A FakeBackend that keeps every batch it generated, in order."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.batches: list[list[list[int]]] = []

    def generate(self, batch: list[list[int]], max_output_tokens: int) -> BatchStats:
        self.batches.append(batch)
        return super().generate(batch, max_output_tokens)


class StageLog:
    """A Progress that keeps the stage messages and the measure batch counts."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.measured: list[tuple[int, int]] = []

    def stage(self, message: str) -> None:
        self.messages.append(message)

    def batch(self, phase: str, done: int, total: int) -> None:
        if phase == "measure":
            self.measured.append((done, total))


def small_config(output_dir: Any, **kw: object) -> ExperimentConfig:
    """A tiny in-process config writing under ``output_dir`` (no baseline, no idle after, no MLflow)."""
    base: dict[str, object] = dict(
        n=8, batch_size=2, max_input_tokens=4, max_output_tokens=3, baseline_s=0.0, idle_after_s=0.0,
        output_dir=str(output_dir), mlflow=False, sampling_interval_s=0.005,
    )  # fmt: skip
    return ExperimentConfig.model_validate({**base, **kw})


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError; ``value``, when given, is the NVML return code (as pynvml's)."""

    def __init__(self, *args: object, value: int | None = None) -> None:
        super().__init__(*args)
        if value is not None:  # a subclass may carry its code as a class attribute
            self.value = value


@dataclass
class FakeGpu:
    """One GPU behind FakeNvml: what it reports, and which of its reads fail."""

    uuid: str
    bus_id: str
    name: str = "NVIDIA H200"
    energy_mj: int = 0
    power_avg_mw: int = 115_900
    power_instant_mw: int | None = 80_700  # None: field unsupported
    mig_mode: int | None = None  # None: GetMigMode not supported
    fail_energy: bool = False
    fail_temperature: bool = False
    has_event_reasons: bool = True
    pids: list[int] | None = None  # compute processes listed; None: the call is not supported
    only_v2_processes: bool = False  # the driver lacks the v3 process call (pynvml: library mismatch)
    power_buffer: FakePowerBuffer | None = None  # None: nvmlDeviceGetSamples answers Not Supported


class FakeLibraryMismatchError(Exception):
    """Stands in for pynvml.NVMLLibraryMismatchError, which is not an NVMLError."""


class FakeNvml:
    """The subset of pynvml that ``llem_mlflow.measure.device`` uses; strings come as bytes (older pynvml)."""

    NVMLError = FakeNVMLError
    NVMLLibraryMismatchError = FakeLibraryMismatchError
    NVML_FI_DEV_POWER_INSTANT = 186
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_FEATURE_ENABLED = 1
    NVML_TOTAL_POWER_SAMPLES = 0

    def __init__(self, gpus: list[FakeGpu], fail_init: bool = False, as_bytes: bool = True) -> None:
        self.gpus = gpus
        self.fail_init = fail_init
        self.as_bytes = as_bytes
        self.initialised = False
        self.shutdowns = 0
        self.uuid_lookups: list[str] = []

    def _s(self, text: str) -> str | bytes:
        return text.encode() if self.as_bytes else text

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise FakeNVMLError("Driver Not Loaded")
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        return self._s("580.159.04")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        return self.gpus[i]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        self.uuid_lookups.append(uuid)
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetHandleByPciBusId(self, bus_id: str) -> FakeGpu:
        for gpu in self.gpus:
            if gpu.bus_id.lower() == bus_id.lower():
                return gpu
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetIndex(self, h: FakeGpu) -> int:
        return self.gpus.index(h)

    def nvmlDeviceGetName(self, h: FakeGpu) -> str | bytes:
        return self._s(h.name)

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str | bytes:
        return self._s(h.uuid)

    def nvmlDeviceGetPciInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(busId=self._s(h.bus_id))

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(total=150_000_000_000, used=2_000_000_000, free=0)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:
        return 700_000

    def nvmlDeviceGetPersistenceMode(self, h: FakeGpu) -> int:
        return 1

    def nvmlDeviceGetCudaComputeCapability(self, h: FakeGpu) -> tuple[int, int]:
        return (9, 0)

    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        if h.mig_mode is None:
            raise FakeNVMLError("Not Supported")
        return [h.mig_mode, h.mig_mode]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        if h.fail_energy:
            raise FakeNVMLError("Not Supported")
        return h.energy_mj

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return h.power_avg_mw

    def nvmlDeviceGetFieldValues(self, h: FakeGpu, ids: list[int]) -> list[Any]:
        if ids != [self.NVML_FI_DEV_POWER_INSTANT]:
            raise FakeNVMLError("Invalid Argument")
        if h.power_instant_mw is None:
            return [SimpleNamespace(nvmlReturn=3, valueType=1, value=SimpleNamespace(uiVal=0))]
        return [SimpleNamespace(nvmlReturn=0, valueType=1, value=SimpleNamespace(uiVal=h.power_instant_mw))]

    def nvmlDeviceGetSamples(self, h: FakeGpu, sampling_type: int, since_us: int) -> tuple[int, list[Any]]:
        """The power buffer's samples newer than ``since_us`` (uiVal, mW); Not Found when none is newer."""
        if sampling_type != self.NVML_TOTAL_POWER_SAMPLES:
            raise FakeNVMLError("Invalid Argument", value=2)
        if h.power_buffer is None:
            raise FakeNVMLError("Not Supported", value=3)
        samples = h.power_buffer.since(since_us)
        if not samples:
            raise FakeNVMLError("Not Found", value=6)
        return 1, [SimpleNamespace(timeStamp=t, sampleValue=SimpleNamespace(uiVal=mw)) for t, mw in samples]

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        if h.fail_temperature:
            raise FakeNVMLError("Not Supported")
        return 41

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock: int) -> int:
        return 1980 if clock == self.NVML_CLOCK_SM else 0

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> Any:
        return SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGpu) -> int:
        if not h.has_event_reasons:
            raise FakeNVMLError("Function Not Found")
        return 0x4

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeGpu) -> int:
        return 0x20

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu) -> list[Any]:
        if h.only_v2_processes:
            raise FakeLibraryMismatchError("use a versioned function")
        return self.nvmlDeviceGetComputeRunningProcesses_v2(h)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h: FakeGpu) -> list[Any]:
        if h.pids is None:
            raise FakeNVMLError("Not Supported")
        return [SimpleNamespace(pid=pid, usedGpuMemory=1 << 20) for pid in h.pids]


# --- PoweredGpu: a GpuDevice whose counter and power agree, as a real board's do --------------------


class PoweredGpu:
    """A physically plausible GPU: ``idle_w`` at rest, ``busy_w`` while ``busy()`` runs (FakeBackend's
    ``on_generate``), and an energy counter that integrates that power over wall time.

    ``device`` is the ``FakeDevice`` to measure (its power and counter read this board);
    ``counter_scale`` multiplies every counter reading (1000: the millijoule counter read as joules).
    """

    def __init__(
        self,
        idle_w: float = 100.0,
        busy_w: float = 400.0,
        busy_s: float = 0.3,
        counter_scale: float = 1.0,
        cuda_index: int = 0,
        power_limit_w: float | None = 700.0,
        slow: SlowReading = DEFAULT_SLOW,
    ) -> None:
        self.idle_w, self.busy_w, self.busy_s, self.counter_scale = idle_w, busy_w, busy_s, counter_scale
        self._lock = threading.Lock()
        self._power_w = idle_w
        self._energy_j = 0.0
        self._since_s = time.time()
        self.device = FakeDevice(
            cuda_index=cuda_index,
            uuid=f"GPU-fake-{cuda_index}",
            energy_script=self._counter_j,
            power_w=lambda: self._power_w,
            slow=slow,
            power_limit_w=power_limit_w,
        )

    def _set_power(self, power_w: float) -> None:
        with self._lock:
            now_s = time.time()
            self._energy_j += (now_s - self._since_s) * self._power_w
            self._since_s, self._power_w = now_s, power_w

    def _counter_j(self) -> float:
        with self._lock:
            return (self._energy_j + (time.time() - self._since_s) * self._power_w) * self.counter_scale

    def busy(self) -> None:
        """Draw ``busy_w`` for ``busy_s`` seconds, then fall back to ``idle_w``."""
        self._set_power(self.busy_w)
        time.sleep(self.busy_s)
        self._set_power(self.idle_w)


def ctrl_c_at(call: int) -> Callable[[], None]:
    """An on_generate hook raising KeyboardInterrupt at generate call ``call`` (1-based)."""
    calls = {"n": 0}

    def hook() -> None:
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt

    return hook
