"""The parts of a result that hold no MLflow naming: GPUs and environment, windows, compute and phase
figures, uncertainty, steady-state trimming, isolated prefill, cycles and stage timings.

``schema.ExperimentResult`` is built of these and re-exports them; ``naming`` reads them without
importing ``schema`` (which imports ``naming``), so the imports run one way: records <- naming <- schema.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from llem_mlflow.figures.stats import Interval


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class GpuSnapshot(_Model):
    """One GPU the model used, as NVML reports it."""

    cuda_index: int
    nvml_index: int
    name: str
    uuid: str
    pci_bus_id: str | None = None
    memory_total_b: int | None = None
    power_limit_w: float | None = None
    persistence_mode: bool | None = None
    compute_capability: str | None = None


class EnvironmentSnapshot(_Model):
    """Where the experiment ran. Never holds secrets (tokens, passwords, URI credentials)."""

    python_version: str
    platform: str
    cpu_model: str | None = None
    cpu_count: int | None = None
    ram_total_b: int | None = None
    packages: dict[str, str | None] = Field(
        default_factory=dict
    )  # torch, transformers, mlflow, llem-mlflow...
    cuda_runtime: str | None = None
    driver_version: str | None = None
    gpus: list[GpuSnapshot] = Field(default_factory=list)
    git_commit: str | None = None
    git_dirty: bool | None = None


class Window(_Model):
    """A timed phase; timestamps are Unix epoch seconds."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        """Length of the window in seconds."""
        return self.end_s - self.start_s


class ComputeFigures(_Model):
    """FLOPs and memory bytes per phase and what they say about efficiency: the compute roof (MFU) and the
    memory roof (bandwidth utilization); see ``flops`` and ``roofline`` for the counting rules.

    The bytes fields are null in results written before they existed, and without a known precision.
    """

    prefill_flops: float = Field(ge=0)
    decode_flops: float = Field(ge=0)
    attention_convention: str = "causal half: L(L+1)/2 (query, key) pairs per prefill row; padding counted"
    peak_flops_per_s: float | None = None  # dense peak of the GPU model at the precision, per GPU
    mfu: float | None = None  # total FLOPs / (measured seconds x peak x GPUs), a fraction
    energy_per_tflop_j: float | None = None  # gross energy / (total FLOPs / 1e12)
    prefill_bytes: float | None = Field(default=None, ge=0)  # weights once per batch + KV cache written
    decode_bytes: float | None = Field(default=None, ge=0)  # weights once per step + KV cache read
    bytes_method: str | None = None  # roofline.BYTES_METHOD
    peak_memory_bytes_per_s: float | None = None  # peak memory bandwidth of the GPU model, per GPU
    memory_bandwidth_util: float | None = None  # decode bytes / (decode step s x peak x GPUs), a fraction


class Uncertainty(_Model):
    """Bounds on the energy figures (all cycles together); see ``assess`` for the rules."""

    window_edges_j: float | None = None  # counter staleness at the measured windows' edges
    idle_edges_j: float | None = None  # the idle baseline's edge error, carried into net energy
    gain_pct: float = 5.0  # NVML sensor gain uncertainty, +- % of reading
    gross_j: float | None = None  # window edges + gain x gross
    net_j: float | None = None  # window edges + idle edges + gain x |net| (worst-case sum)
    counter_vs_trace_pct: float | None = None  # the largest per-GPU gap, a cross-check
    idle_before_w: float | None = None  # median trace power over the counter baseline
    idle_after_w: float | None = None  # median trace power over model-resident idle after the last cycle


class PhaseEnergy(_Model):
    """Gross energy split into prefill, decode and the rest of the window (see ``phases``)."""

    prefill_j: float
    decode_j: float
    other_j: float
    prefill_s: float
    decode_s: float
    method: str


class SteadyState(_Model):
    """What ``measurement_methodology: steady_state`` left out of each cycle (see ``steady``)."""

    rule: str
    trimmed_batches: list[int]  # per cycle: leading batches left out as ramp
    ramp_s: list[float]  # per cycle: from the full window's start to the first steady batch
    full_window_s: list[float]  # per cycle: the whole window, ramp included
    full_window_gross_j: list[float | None] | None = None  # per cycle, counter; null: no GPU / unknown
    batch_power_w: list[list[float | None]]  # per cycle, per batch: mean trace power (the rule's input)
    # The cost of the batch-edge counter reads inside each cycle's window (sync + read of every GPU,
    # timed with time.perf_counter): their count, their seconds and their share of the whole window.
    # Backend latencies (TTFT, ITL) never include them; the window's time and energy do.
    in_window_reads: list[int] | None = None
    in_window_read_s: list[float] | None = None
    in_window_read_pct: list[float] | None = None


class IsolatedPrefill(_Model):
    """Prefill measured alone: passes of generate(max_new_tokens=1) over every batch, one counter window."""

    method: str
    passes: int = Field(ge=1)
    batches_per_pass: int = Field(ge=1)
    input_tokens_per_pass: int = Field(ge=0)
    duration_s: float = Field(ge=0)
    per_pass_s: float = Field(ge=0)
    gross_j: float | None = None
    net_j: float | None = None
    edge_uncertainty_j: float | None = None
    per_pass_j: float | None = None  # gross / passes
    net_per_pass_j: float | None = None
    per_input_token_j: float | None = None  # gross per pass / input tokens per pass
    net_per_input_token_j: float | None = None


class PartialCycle(_Model):
    """A cycle an interrupt cut short: its figures hold its completed batches only; no interval uses it.

    ``abandoned_s``: seconds of the batch the interrupt abandoned that are in this cycle's time and
    energy (its tokens are not); 0 when the window ends where that batch began (see ``measure.Cut``).
    """

    completed_batches: int = Field(ge=1)
    batches: int = Field(ge=1)  # the cycle's batches
    abandoned_s: float = Field(ge=0)


class CycleRecord(_Model):
    """One measured cycle (all ``n`` prompts once); energies are null without an NVIDIA GPU."""

    index: int = Field(ge=0)
    start_s: float
    end_s: float
    duration_s: float = Field(ge=0)
    output_tokens: int = Field(ge=0)
    output_tokens_per_s: float = Field(ge=0)
    gross_j: float | None = None  # null without a GPU, or when a GPU's counter delta is unknown
    net_j: float | None = None
    edge_uncertainty_j: float | None = None
    energy_per_output_token_j: float | None = None  # gross / output tokens
    net_energy_per_output_token_j: float | None = None  # net / output tokens
    unknown_gpus: list[int] = Field(default_factory=list)  # GPUs whose counter delta is unknown here
    partial: PartialCycle | None = None  # set when Ctrl-C or SIGTERM cut this cycle short


class CycleStats(_Model):
    """The measured window repeated ``n`` times in one process, with 95% intervals (Student t) per figure.

    An interval is null when it cannot exist (no GPU: no energy), never zero; its bounds are null below
    ``stats.MIN_INTERVAL_N`` cycles. Energy intervals leave out the cycles whose energy is unknown
    (``Interval.left_out``). Positive figures have log-scale bounds (``stats``).
    """

    n: int = Field(ge=1)
    cooldown_s: float = Field(ge=0)
    order: str  # how batches were ordered per cycle
    records: list[CycleRecord]
    duration_s_ci95: Interval
    output_tokens_per_s_ci95: Interval
    gross_j_ci95: Interval | None = None
    net_j_ci95: Interval | None = None
    energy_per_output_token_j_ci95: Interval | None = None
    net_energy_per_output_token_j_ci95: Interval | None = None


class Timings(_Model):
    """Wall time of each stage of the run, in seconds (``time.perf_counter``); null: the stage did not run.

    result.json is written before MLflow is called, so its copy holds what ended by then: ``write_s``
    is the trace file only and ``log_s`` is null. ``Outcome.timings`` and the CLI's ``stages`` line
    have both files in ``write_s``, ``log_s``, and ``total_s`` up to the end of logging.
    """

    startup_s: float | None = Field(default=None, ge=0)  # process start to run start, telling the device
    # (GPU defaults: may import torch) included (CLI on Linux only)
    checks_s: float | None = Field(default=None, ge=0)  # preflight: folder, dataset, model config, store
    load_s: float | None = Field(default=None, ge=0)  # loading the model (weights, CUDA context)
    import_wait_s: float | None = Field(default=None, ge=0)  # waiting for the MLflow import after load
    warmup_s: float | None = Field(default=None, ge=0)  # warm-up batches
    idle_settle_s: float | None = Field(default=None, ge=0)  # waiting for idle power to settle
    baseline_s: float | None = Field(default=None, ge=0)  # the idle baseline's counter window
    measure_s: float | None = Field(default=None, ge=0)  # every cycle, cool-downs included
    prefill_isolated_s: float | None = Field(default=None, ge=0)  # the isolated-prefill passes
    idle_after_s: float | None = Field(default=None, ge=0)  # model-resident idle after the cycles
    derive_s: float | None = Field(default=None, ge=0)  # figures, flags and environment snapshot
    write_s: float | None = Field(default=None, ge=0)  # result files (result.json's copy: the trace only)
    log_s: float | None = Field(default=None, ge=0)  # MLflow; null in result.json and when not logged
    total_s: float = Field(ge=0)  # run start to this block (result.json: just before its own write)

    def stages(self) -> dict[str, float]:
        """The stages that ran, in run order (``startup_s`` and ``total_s`` left out), name without ``_s``."""
        skip = ("startup_s", "total_s")
        return {k[:-2]: v for k, v in self.model_dump().items() if k not in skip and v is not None}


class QualityFigure(_Model):
    """A quality figure of the measured model, taken after the measured windows (``quality``)."""

    metric: str  # "perplexity"
    value: float | None  # null when it could not be taken (``note`` says why)
    tokens: int | None = None  # tokens scored
    window: int | None = None  # context window of the sliding evaluation
    text_sha256: str | None = None  # the held-out text's digest: the same text gives comparable figures
    seconds: float | None = None
    note: str | None = None  # e.g. random weights: meaningless
