"""The narrow seams the runner depends on: a GPU device, a model backend, and their data.

Only plain dataclasses and ``typing.Protocol`` live here; real adapters are
``device.NvmlDevice`` (pynvml) and ``backends.hf.TransformersBackend`` (torch/transformers),
and tests inject hand-written fakes (``tests/fakes.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only: importing the seams stays cheap (no pydantic, no yaml)
    from llem_mlflow.config import ExperimentConfig
    from llem_mlflow.served import LoadRun


@dataclass(frozen=True)
class CudaDeviceId:
    """How the process sees one CUDA device, enough to find it in NVML without index guessing."""

    cuda_index: int
    uuid: str | None  # "GPU-xxxxxxxx-..." as NVML spells it, when torch reports it
    pci_bus_id: str | None  # "00000000:19:00.0", when torch reports it


@dataclass(frozen=True)
class GpuInfo:
    """Static facts about one GPU, read once."""

    cuda_index: int
    nvml_index: int
    name: str
    uuid: str
    pci_bus_id: str | None
    memory_total_b: int | None
    power_limit_w: float | None
    persistence_mode: bool | None
    compute_capability: str | None


@dataclass(frozen=True)
class SlowReading:
    """Readings taken less often than power (each may be None when NVML cannot give it)."""

    temperature_c: float | None
    sm_clock_mhz: float | None
    utilization_pct: float | None
    memory_used_b: int | None
    throttle_reasons: int | None
    # compute processes NVML lists on this GPU, this one included (0 can also mean NVML cannot see
    # them, e.g. in a container); None when NVML cannot say
    compute_processes: int | None = None


class GpuDevice(Protocol):
    """One GPU as the measurement needs it. Units are SI: joules, watts."""

    @property
    def info(self) -> GpuInfo:
        """Static facts (name, UUID, limits)."""
        ...

    def energy_j(self) -> float:
        """The cumulative energy counter in joules (costly: ~4 ms; read at window edges only)."""
        ...

    def power_w(self) -> float:
        """Instantaneous board power in watts (cheap: microseconds)."""
        ...

    def power_samples(self, since_us: int) -> list[tuple[int, float]]:
        """The driver's power sample buffer: ``(timestamp_us, watts)`` newer than ``since_us``, oldest first.

        Timestamps are microseconds on the driver's clock (not necessarily the Unix epoch: see
        ``measure.power_buffer``); ``since_us=0`` gives every sample the buffer holds, ``[]`` means none
        newer. Raises ``measure.device.PowerBufferUnsupportedError`` when the GPU keeps no such buffer.
        """
        ...

    def slow_reading(self) -> SlowReading:
        """Temperature, SM clock, utilization, memory used, throttle reasons, compute processes."""
        ...


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs estimate needs from the loaded model."""

    body_matmul_params: int  # 2-D weights outside the input embeddings and the LM head
    lm_head_params: int  # vocab x hidden
    n_layers: int
    attn_dim: int  # n_heads * head_dim (width of Q and of the attended values)
    vocab_size: int
    kv_dim: int | None = None  # kv_heads * head_dim (width of the cached K and V); None: attn_dim


@dataclass(frozen=True)
class ModelFacts:
    """What is known of a model from its config alone, before any weight is loaded."""

    vocab_size: int
    context_length: int | None  # max positions (n_positions / max_position_embeddings); None: unknown
    config_source: str  # "shipped config", "local folder", "HF cache" or "hub"


@dataclass(frozen=True)
class LoadedModel:
    """What loading produced and decided."""

    weights: str  # "pretrained" | "random"
    precision: str  # "fp32" | "fp16" | "bf16"
    device: str  # "cuda" | "cpu"
    load_time_s: float
    shape: ModelShape
    cuda_devices: list[CudaDeviceId] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    revision: str | None = None  # commit hash of pretrained weights when known; None for random weights
    attention: str | None = None  # attention kernel the model uses (e.g. "sdpa"); None: not reported
    settled: dict[str, str] = field(default_factory=dict)  # config fields the load changed (a GPU default
    # it could not apply, e.g. {"compile": "off", "cache": "dynamic"}); the run measures with these


@dataclass(frozen=True)
class BatchStats:
    """One generate() call, counted exactly, with its step timings when the backend took them.

    Timings are seconds between marks taken right after the forward pass that produced each new
    token's logits (device time on CUDA, wall time on CPU). ``prefill_s``: generate() start to the
    first token's logits (time to first token of every row); ``decode_step_s``: one per decode step,
    between consecutive tokens' logits, so ``new_tokens - 1`` of them. None / ``()``: not timed.

    ``input_lens`` / ``output_lens`` are per row, in batch order, real tokens only (no padding assumed:
    a backend that does not pad fills them the same way); ``()`` when the backend does not report them.
    Their sums are ``input_tokens`` / ``output_tokens``.
    """

    input_tokens: int  # real prompt tokens (no padding)
    output_tokens: int  # generated tokens (no pads after EOS)
    padded_input_len: int  # backend-specific: the prompt width the GPU processed, when it pads (left padding)
    new_tokens: int  # generation steps taken (max over the batch)
    batch_size: int
    prefill_s: float | None = None  # generate() start -> first token's logits
    decode_step_s: tuple[float, ...] = ()  # one per decode step (new_tokens - 1)
    input_lens: tuple[int, ...] = ()  # one per row: its real prompt tokens
    output_lens: tuple[int, ...] = ()  # one per row: its generated tokens up to and including EOS


class Backend(Protocol):
    """A model runtime: inspect, tokenize (both before loading), load once, generate, synchronize."""

    def inspect(self) -> ModelFacts:
        """Vocabulary size and context length from the model's config only (no weights, no GPU)."""
        ...

    def tokenize(self, prompts: list[str], max_input_tokens: int) -> list[list[int]]:
        """Token ids of text prompts, truncated to ``max_input_tokens``; works before ``load()``."""
        ...

    def tokenizer_name(self) -> str:
        """Which tokenizer ``tokenize`` used, e.g. ``"gpt2 (HF cache)"`` or ``"byte-level fallback"``."""
        ...

    def load(self) -> LoadedModel:
        """Load or build the model on its device."""
        ...

    def generate(self, batch: list[list[int]], max_output_tokens: int) -> BatchStats:
        """Generate exactly ``max_output_tokens`` new tokens per prompt (EOS ignored)."""
        ...

    def warmup_groups(self, cfg: ExperimentConfig, groups: list[list[list[int]]]) -> list[list[list[int]]]:
        """The batches of ``groups`` to run before warm-up so that nothing compiles inside a measured window.

        Empty when the run ``cfg`` describes compiles nothing; the measurement runs them first, untimed.
        """
        ...

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA sync); no-op on CPU."""
        ...

    def versions(self) -> dict[str, str | None]:
        """torch, transformers and CUDA runtime versions."""
        ...


class RequestLoad(Protocol):
    """The server scenario's workload (``serving`` implements it, ``measure.serving`` drives it).

    ``target_concurrency``: requests in flight the closed loop keeps (None: open loop). ``send`` runs one
    cycle's load (or, with ``warmup``, one warm-up round) and returns when every request has ended; on
    Ctrl-C it stops sending and raises ``served.LoadCut`` with the requests that ended.
    """

    @property
    def target_concurrency(self) -> int | None:
        """The closed loop's in-flight target; None for the open loop."""
        ...

    def send(self, cycle: int, *, warmup: bool = False) -> LoadRun:
        """One cycle's requests (``warmup``: one warm-up round), every one ended."""
        ...
