"""ExperimentConfig: what one experiment asks to measure, and where its results go.

The config holds requested values (``device: auto``...); what a run resolved them to, and its hash: identity.

The config is inert: validating it touches no GPU, network or environment variable. ``load_config`` reads
YAML and applies overrides; every failure is a ``ConfigError`` whose message (one line) names the field and
what is allowed. Numbers are finite and bounded (no NaN/inf, no ``true`` for a number, no value so large that
a later stage would overflow or never end), so a bad value is refused here, before any check or model load.
The bounds and text limits themselves live in ``config_rules`` and are re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from llem_mlflow.config_rules import MAX_CARBON_G_PER_KWH as MAX_CARBON_G_PER_KWH
from llem_mlflow.config_rules import MAX_CONCURRENCY as MAX_CONCURRENCY
from llem_mlflow.config_rules import MAX_CV_PCT as MAX_CV_PCT
from llem_mlflow.config_rules import MAX_CYCLES as MAX_CYCLES
from llem_mlflow.config_rules import MAX_EXPERIMENT_NAME as MAX_EXPERIMENT_NAME
from llem_mlflow.config_rules import MAX_NAME_BYTES as MAX_NAME_BYTES
from llem_mlflow.config_rules import MAX_OUTPUT_DIR_BYTES as MAX_OUTPUT_DIR_BYTES
from llem_mlflow.config_rules import MAX_PATH_BYTES as MAX_PATH_BYTES
from llem_mlflow.config_rules import MAX_PAUSE_S as MAX_PAUSE_S
from llem_mlflow.config_rules import MAX_PROMPT_FIELD as MAX_PROMPT_FIELD
from llem_mlflow.config_rules import MAX_PROMPTS as MAX_PROMPTS
from llem_mlflow.config_rules import MAX_PUE as MAX_PUE
from llem_mlflow.config_rules import MAX_REQUEST_RATE as MAX_REQUEST_RATE
from llem_mlflow.config_rules import MAX_RUN_NAME as MAX_RUN_NAME
from llem_mlflow.config_rules import MAX_SEED as MAX_SEED
from llem_mlflow.config_rules import MAX_SETTLE_S as MAX_SETTLE_S
from llem_mlflow.config_rules import MAX_TOKENS as MAX_TOKENS
from llem_mlflow.config_rules import MAX_URI as MAX_URI
from llem_mlflow.config_rules import MAX_WARMUP_BATCHES as MAX_WARMUP_BATCHES
from llem_mlflow.config_rules import MIN_SAMPLING_INTERVAL_S as MIN_SAMPLING_INTERVAL_S
from llem_mlflow.config_rules import TEXT_LIMITS as TEXT_LIMITS
from llem_mlflow.config_rules import TextLimit as TextLimit
from llem_mlflow.config_rules import bounds_text, pairing_problem
from llem_mlflow.config_rules import span as span
from llem_mlflow.config_server import server_problem
from llem_mlflow.config_yaml import format_validation_error as format_validation_error
from llem_mlflow.config_yaml import read_yaml as read_yaml
from llem_mlflow.errors import ConfigError
from llem_mlflow.secrets import scrub_secrets

#: The MLflow experiment runs go to when none is named (CLI, API, examples, `mlflow run` docs).
DEFAULT_EXPERIMENT = "llem-mlflow"


class ExperimentConfig(BaseModel):
    """One experiment: model, workload, measurement settings and output/tracking settings."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    model: str = Field(
        "gpt2",
        min_length=1,
        description=f"Hub id, shipped config name or local folder ({TEXT_LIMITS['model'].text()}).",
    )
    backend: Literal["pytorch"] = "pytorch"
    n: int = Field(32, ge=1, le=MAX_PROMPTS, description=f"Number of prompts ({span(1, MAX_PROMPTS)}).")
    batch_size: int = Field(
        8, ge=1, le=MAX_PROMPTS, description=f"Prompts per generate() call ({span(1, MAX_PROMPTS)})."
    )
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="fp32|fp16|bf16, or auto: bf16 on CUDA (fp16 without bf16), fp32 on CPU."
    )
    max_input_tokens: int = Field(
        64,
        ge=1,
        le=MAX_TOKENS,
        description=f"Prompt length (synthetic) or truncation limit ({span(1, MAX_TOKENS)}).",
    )
    max_output_tokens: int = Field(
        64,
        ge=1,
        le=MAX_TOKENS,
        description=f"Exactly this many new tokens per prompt, EOS ignored ({span(1, MAX_TOKENS)}).",
    )
    dataset: str = Field(
        "synthetic",
        min_length=1,
        description=f"'synthetic' or a path to a .jsonl of prompts ({TEXT_LIMITS['dataset'].text()}).",
    )
    prompt_field: str = Field(
        "prompt",
        min_length=1,
        description=f"JSON key of the prompt text in a .jsonl file ({TEXT_LIMITS['prompt_field'].text()}).",
    )
    weights: Literal["auto", "pretrained", "random"] = "auto"
    trust_remote_code: bool = Field(
        False,
        description="Run Python code from the model's hub repo (it runs with your rights): off unless asked.",
    )
    device: Literal["auto", "cuda", "cpu"] = "auto"
    seed: int = Field(42, ge=0, le=MAX_SEED, description=f"Random seed ({span(0, MAX_SEED)}).")
    warmup_batches: int = Field(
        1,
        ge=0,
        le=MAX_WARMUP_BATCHES,
        description=f"generate() calls before measuring ({span(0, MAX_WARMUP_BATCHES)}).",
    )
    warmup_settle_cv_pct: float | None = Field(
        None,
        gt=0.0,
        le=MAX_CV_PCT,
        description="Keep warming up until the CV of the last 3 batch latencies is below this "
        f"({span(0, MAX_CV_PCT, low_open=True)}).",
    )
    warmup_max_batches: int = Field(
        20,
        ge=1,
        le=MAX_WARMUP_BATCHES,
        description=f"Cap on warm-up batches when settling ({span(1, MAX_WARMUP_BATCHES)}).",
    )
    warmup_power_settle_pct: float | None = Field(
        None,
        gt=0.0,
        le=MAX_CV_PCT,
        description="After latency settles, keep warming up in stretches of >= 2 s until the power drift "
        "fitted over the last 5 (energy counter), projected over min_window_s (20 s when 0), is below this % "
        f"of the power (at most warmup_power_max_s) ({span(0, MAX_CV_PCT, low_open=True)}).",
    )
    warmup_power_max_s: float = Field(
        60.0,
        gt=0.0,
        le=MAX_SETTLE_S,
        description="Cap on the power settle warm-up in seconds; five stretches always run "
        f"({span(0, MAX_SETTLE_S, low_open=True)}).",
    )
    cycles: int = Field(
        1,
        ge=1,
        le=MAX_CYCLES,
        description=f"Measured windows repeated with the model loaded once ({span(1, MAX_CYCLES)}).",
    )
    min_window_s: float = Field(
        0.0,
        ge=0.0,
        le=MAX_PAUSE_S,
        description="Repeat the prompt set within each measured cycle until the window lasts at least this "
        "long; passes are chosen once after warm-up from its batch latencies; 0: one pass "
        f"({span(0, MAX_PAUSE_S)}).",
    )
    cooldown_s: float = Field(
        0.0,
        ge=0.0,
        le=MAX_PAUSE_S,
        description=f"Pause between cycles in seconds, GPU idle ({span(0, MAX_PAUSE_S)}).",
    )
    baseline_s: float = Field(
        3.0,
        ge=0.0,
        le=MAX_PAUSE_S,
        description=f"Idle-power baseline length in seconds; 0 disables ({span(0, MAX_PAUSE_S)}).",
    )
    idle_settle_max_s: float = Field(
        0.0,
        ge=0.0,
        le=MAX_SETTLE_S,
        description="Before the baseline, wait up to this long for idle power to settle "
        f"({span(0, MAX_SETTLE_S)}).",
    )
    idle_after_s: float = Field(
        1.0, ge=0, le=MAX_PAUSE_S, description=f"Drift-check idle after the cycles ({span(0, MAX_PAUSE_S)})."
    )
    measurement_methodology: Literal["total", "steady_state"] = Field(
        "total", description="total: every measured batch; steady_state: the ramp is trimmed (see docs)."
    )
    isolated_prefill: bool = Field(
        False, description="Also measure prefill alone: passes with max_new_tokens=1, in their own window."
    )
    device_map: Literal["auto", "balanced", "sequential"] | dict[str, int | str] | None = Field(
        None, description="Split the model over GPUs: auto|balanced|sequential or {module: gpu}; CUDA only."
    )
    cache: Literal["dynamic", "static"] = Field(
        "dynamic", description="KV cache: dynamic (grows each step) or static (preallocated, fixed shapes)."
    )
    compile: Literal["off", "default", "reduce-overhead", "max-autotune", "graph"] = Field(
        "off",
        description="torch.compile of the decode step by generate() (reduce-overhead: CUDA graphs); graph: "
        "our own decode loop, one CUDA graph per decode step.",
    )
    batching: Literal["static", "continuous"] = Field(
        "static", description="static: generate() per batch; continuous: generate_batch, <=batch_size a step."
    )
    quality: Literal["off", "perplexity"] = Field(
        "off", description="After measuring: perplexity on a shipped held-out text (in-process runs)."
    )
    attention: Literal["auto", "eager", "sdpa"] = Field(
        "auto", description="attn_implementation at load; auto: the model's default."
    )
    sampling_interval_s: float = Field(
        0.015,
        ge=MIN_SAMPLING_INTERVAL_S,
        le=1.0,
        description=f"Power trace period in seconds ({span(MIN_SAMPLING_INTERVAL_S, 1.0)}).",
    )
    power_sampling: Literal["auto", "buffer", "poll"] = Field(
        "auto",
        description="Power trace source: auto: the driver's power sample buffer where kept, else polling; "
        "buffer: auto, warning when polling; poll.",
    )
    carbon_intensity_g_per_kwh: float | None = Field(
        None,
        ge=0.0,
        le=MAX_CARBON_G_PER_KWH,
        description="Grid carbon intensity for an optional carbon figure; never looked up "
        f"({span(0, MAX_CARBON_G_PER_KWH)}).",
    )
    gain_uncertainty_pct: float = Field(
        5.0,
        ge=0.0,
        le=100.0,
        description=f"NVML power sensor gain uncertainty, +- % of reading ({span(0, 100.0)}).",
    )
    pue: float = Field(
        1.0,
        ge=1.0,
        le=MAX_PUE,
        description=f"Data-centre PUE applied to the carbon figure ({span(1, MAX_PUE)}).",
    )
    output_dir: str = Field(
        "results",
        min_length=1,
        description=f"Parent folder of <experiment_id>/ ({TEXT_LIMITS['output_dir'].text()}).",
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; default MLFLOW_TRACKING_URI or sqlite "
        f"({TEXT_LIMITS['tracking_uri'].text()}).",
    )
    experiment_name: str | None = Field(
        None,
        description="MLflow experiment, ignored inside `mlflow run` "
        f"({TEXT_LIMITS['experiment_name'].text()}).",
    )
    run_name: str | None = Field(None, description=f"MLflow run name ({TEXT_LIMITS['run_name'].text()}).")
    mlflow: bool = Field(True, description="Log the result to MLflow.")
    scenario: Literal["in_process", "server"] = Field(
        "in_process",
        description="in_process: generate() in this process; server: streamed requests to an "
        "OpenAI-compatible server (server_command or server_url).",
    )
    server_command: str | None = Field(
        None,
        description="Launch the server: a command with {model}, {port}, {host}, e.g. 'transformers serve "
        f"{{model}} --port {{port}}' ({TEXT_LIMITS['server_command'].text()}).",
    )
    server_url: str | None = Field(
        None,
        description=f"Attach to a running server at this base URL ({TEXT_LIMITS['server_url'].text()}).",
    )
    server_gpus: str | None = Field(
        None,
        description="An attached server's GPUs, CUDA indices or UUIDs, comma-separated; default all "
        f"({TEXT_LIMITS['server_gpus'].text()}).",
    )
    concurrency: int | None = Field(
        None,
        ge=1,
        le=MAX_CONCURRENCY,
        description=f"Closed loop: requests in flight; 8 without request_rate ({span(1, MAX_CONCURRENCY)}).",
    )
    request_rate: float | None = Field(
        None,
        gt=0.0,
        le=MAX_REQUEST_RATE,
        description=f"Open loop: seeded Poisson arrivals, requests/s ({span(0, MAX_REQUEST_RATE, True)}).",
    )
    api: Literal["completions", "chat"] = Field(
        "completions", description="Server route: /v1/completions or /v1/chat/completions."
    )
    request_timeout_s: float = Field(
        120.0,
        gt=0.0,
        le=MAX_PAUSE_S,
        description=f"Server: one request's limit ({span(0, MAX_PAUSE_S, True)}).",
    )
    server_start_timeout_s: float = Field(
        600.0, gt=0.0, le=MAX_PAUSE_S, description=f"Launch: wait for health ({span(0, MAX_PAUSE_S, True)})."
    )

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: object, info: ValidationInfo) -> object:
        # pydantic reads true/false as 1/0; `n: yes` in YAML would silently mean one prompt
        if isinstance(value, bool) and info.field_name in _NUMBER_FIELDS:
            raise ValueError(f"must be a number, not {str(value).lower()}")
        return value

    @field_validator("precision", mode="before")
    @classmethod
    def _unset_precision_is_auto(cls, value: object) -> object:
        return "auto" if value is None else value  # results written before "auto" existed hold null

    @field_validator("dataset")
    @classmethod
    def _dataset_is_synthetic_or_jsonl(cls, value: str) -> str:
        if value != "synthetic" and not value.endswith(".jsonl"):
            raise ValueError(
                "must be 'synthetic' or a path to a .jsonl file with one {\"prompt\": ...} per line"
            )
        return value

    @field_validator(*TEXT_LIMITS, mode="before")
    @classmethod
    def _text_fits(cls, value: object, info: ValidationInfo) -> object:
        # names MLflow or the filesystem would reject after the measurement are refused before it
        # (before pydantic's own checks, which would call text that is not UTF-8 "not a valid string")
        problem = TEXT_LIMITS[str(info.field_name)].problem(value) if isinstance(value, str) else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("device_map", mode="before")
    @classmethod
    def _device_map_from_json(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                msg = f"not valid JSON ({exc}); give auto, balanced, sequential or a JSON object"
                raise ValueError(msg) from None
            except RecursionError:
                raise ValueError("JSON nested too deeply; give a flat JSON object {module: gpu}") from None
        return None if value in ("", "none", "null") else value

    @model_validator(mode="after")
    def _fields_agree(self) -> ExperimentConfig:
        problem = pairing_problem(dict(self)) or server_problem(dict(self))
        if problem:
            raise ValueError(problem)
        return self

    @field_serializer("tracking_uri", "server_url", "server_command")
    def _no_credentials(self, value: str | None) -> str | None:
        # Serialized copies (result.json, MLflow params) never hold credentials; the live value keeps them.
        return None if value is None else scrub_secrets(value)


def _numeric(annotation: Any) -> bool:
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return any(m in (int, float) for m in members)


#: Fields holding numbers (int or float, optional or not).
_NUMBER_FIELDS = frozenset(n for n, f in ExperimentConfig.model_fields.items() if _numeric(f.annotation))


def limits(name: str) -> str | None:
    """Field ``name``'s range or text limit in words, as ``-h`` and README show it (None: none to show)."""
    if name in TEXT_LIMITS:
        return TEXT_LIMITS[name].text()
    return bounds_text(ExperimentConfig.model_fields[name].metadata)


def load_config(
    source: str | Path | ExperimentConfig | Mapping[str, Any] | None = None, **overrides: Any
) -> ExperimentConfig:
    """Build a config from a YAML path, an existing config, a mapping or defaults, then apply overrides.

    Overrides whose value is None are ignored (unset CLI flags). Only the fields a user set count as set
    (``model_fields_set``): of an existing config, its set fields are carried over.

    Raises:
        ConfigError: unreadable file, unknown field or invalid value.
    """
    if isinstance(source, ExperimentConfig):
        # the fields it was given, values as they are (model_dump scrubs credentials); an unset field
        # (a GPU default, config_gpu) is decided again by whoever runs the new config
        base: dict[str, Any] = {k: v for k, v in source if k in source.model_fields_set}
    elif isinstance(source, Mapping):
        base = dict(source)
    elif source is None or str(source) == "":
        base = {}
    else:
        base = read_yaml(Path(source))
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ExperimentConfig.model_validate(base)
    except ValidationError as err:
        raise ConfigError(
            f"invalid config: {format_validation_error(err, ExperimentConfig.model_fields)}"
        ) from None
