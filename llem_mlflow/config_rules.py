"""The rules a config's values obey: numeric bounds, text limits, and how ``-h`` and README state them.

One source for the bounds (``MAX_*``), ``TEXT_LIMITS`` (what MLflow's SQL stores and the filesystem take),
``span`` (a range in words) and ``pairing_problem`` (fields that must go together, ``batching: continuous``'s
among them). ``config`` builds ``ExperimentConfig`` on them and re-exports them, so
``from llem_mlflow.config import MAX_RUN_NAME`` keeps working. Imports nothing of llem_mlflow.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import annotated_types

#: Upper bounds of numbers that would otherwise fail or never end after the model loaded.
MAX_PROMPTS = 1_000_000
MAX_TOKENS = 1_048_576  # 2**20 input or output tokens per prompt
MAX_SEED = 2**64 - 1  # torch.manual_seed's range
MAX_PAUSE_S = 3600.0  # time.sleep overflows past ~9.2e9 s
MAX_SETTLE_S = 600.0  # idle power that has not settled in 10 minutes will not
MAX_CYCLES = 1000
MAX_REQUEST_RATE = 100000.0  # requests per second a load generator could send
MAX_CONCURRENCY = 4096  # one client thread per request in flight
MAX_WARMUP_BATCHES = 1000  # as many generate() calls as the most cycles
MAX_CV_PCT = 100.0  # a settle threshold above 100% accepts any warm-up
MIN_SAMPLING_INTERVAL_S = 0.001  # NVML refreshes power every ~20-100 ms; below 1 ms only burns a core
MAX_CARBON_G_PER_KWH = 2000.0  # well above the dirtiest grid (lignite: ~1,100 g/kWh)
MAX_PUE = 5.0  # the worst data centres measure ~3
#: Text limits: what MLflow's SQL stores hold (runs.name 250, experiments.name 256 characters), what Linux
#: takes as a path (PATH_MAX 4,096 bytes with its NUL) and as one file name (NAME_MAX 255 bytes).
MAX_RUN_NAME = 250
MAX_EXPERIMENT_NAME = 256
MAX_PATH_BYTES = 4095
MAX_NAME_BYTES = 255
#: output_dir leaves room under PATH_MAX for ``<experiment_id>/<file>`` (and a temporary file's name).
MAX_OUTPUT_DIR_BYTES = MAX_PATH_BYTES - 2 * MAX_NAME_BYTES
MAX_URI = 4096  # characters; logged as an MLflow param (at most 6,000)
MAX_PROMPT_FIELD = 256  # characters of a JSON key


def span(low: float, high: float, low_open: bool = False) -> str:
    """``1 to 1,000,000`` (``above 0, up to 100``: open below), as ``-h`` and README show a range."""
    return (
        f"above {_number(low)}, up to {_number(high)}" if low_open else f"{_number(low)} to {_number(high)}"
    )


def bounds_text(metadata: Iterable[object]) -> str | None:
    """A field's numeric bounds (pydantic's ``FieldInfo.metadata``) in words; None without both ends."""
    low: Any = None
    high: Any = None
    low_open = False
    for bound in metadata:
        if isinstance(bound, annotated_types.Ge | annotated_types.Gt):
            low_open = isinstance(bound, annotated_types.Gt)
            low = bound.gt if isinstance(bound, annotated_types.Gt) else bound.ge
        elif isinstance(bound, annotated_types.Le):
            high = bound.le
    if low is None or high is None:
        return None
    return span(low, high, low_open)


def _number(value: float) -> str:
    """``3,600`` for 3600.0, ``0.001``, and every digit of a large integer."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class TextLimit:
    """What a text field may hold: characters or UTF-8 bytes at most, bytes per path component, controls.

    ``why`` ends the message of a value that is too long (what would reject it). NUL is never allowed
    (no file name and no MLflow SQL store holds it), nor text that is not UTF-8 (lone surrogates).
    """

    why: str
    max_chars: int | None = None
    max_bytes: int | None = None
    path: bool = False  # each /-separated component at most MAX_NAME_BYTES bytes (a file name)
    controls: bool = False  # control characters other than NUL allowed (a file name may hold a newline)

    def text(self) -> str:
        """The limit in words, as ``-h``, the field description and README show it."""
        size = f"{self.max_chars:,} characters" if self.max_chars else f"{self.max_bytes:,} bytes"
        parts = [f"at most {size}"]
        if self.path:
            parts.append(f"{MAX_NAME_BYTES} bytes a path component")
        parts.append("no NUL" if self.controls else "no control characters")
        return ", ".join(parts)

    def problem(self, value: str) -> str | None:
        """Why ``value`` is refused (one line naming the limit), None when it fits."""
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"is not valid UTF-8 text (character {exc.start + 1}); give it as UTF-8"
        bad = next((i for i, c in enumerate(value) if c == "\0" or not self.controls and _control(c)), None)
        if bad is not None:
            kind = "a NUL character" if value[bad] == "\0" else f"a control character ({value[bad]!r})"
            return f"holds {kind} at position {bad + 1}; {self.text()}"
        if self.max_chars is not None and len(value) > self.max_chars:
            return f"is {len(value):,} characters, more than the {self.max_chars:,} {self.why}"
        if self.max_bytes is not None and len(data) > self.max_bytes:
            return f"is {len(data):,} bytes as UTF-8, more than the {self.max_bytes:,} {self.why}"
        return self._component_problem(value) if self.path else None

    @staticmethod
    def _component_problem(value: str) -> str | None:
        for part in value.split("/"):
            size = len(part.encode("utf-8"))
            if size > MAX_NAME_BYTES:
                shown = repr(part[:24] + "...")
                return (
                    f"path component {shown} is {size:,} bytes; a file or folder name holds at most "
                    f"{MAX_NAME_BYTES} bytes (NAME_MAX)"
                )
        return None


def _control(char: str) -> bool:
    return unicodedata.category(char) == "Cc"


_PATH_WHY = "a path may have (PATH_MAX 4,096 with its NUL)"
#: The text fields and their limits (one source: validation, ``-h``, descriptions and README).
TEXT_LIMITS = {
    "model": TextLimit(_PATH_WHY, max_bytes=MAX_PATH_BYTES, path=True, controls=True),
    "dataset": TextLimit(_PATH_WHY, max_bytes=MAX_PATH_BYTES, path=True, controls=True),
    "prompt_field": TextLimit("a prompt key may have", max_chars=MAX_PROMPT_FIELD, controls=True),
    "output_dir": TextLimit(
        "an output folder may have (PATH_MAX less room for <experiment_id>/<file>)",
        max_bytes=MAX_OUTPUT_DIR_BYTES,
        path=True,
        controls=True,
    ),
    "tracking_uri": TextLimit("a tracking URI may have (it is logged as an MLflow param)", max_chars=MAX_URI),
    "experiment_name": TextLimit(
        "an experiment name may have (MLflow's SQL stores hold 256)", max_chars=MAX_EXPERIMENT_NAME
    ),
    "run_name": TextLimit("a run name may have (MLflow's SQL stores hold 250)", max_chars=MAX_RUN_NAME),
    "server_command": TextLimit(
        "a server command may have (it is logged as an MLflow param)", max_chars=MAX_URI
    ),
    "server_url": TextLimit("a server URL may have (it is logged as an MLflow param)", max_chars=MAX_URI),
    "server_gpus": TextLimit("a GPU list may have", max_chars=MAX_URI),
}


def pairing_problem(values: Mapping[str, Any]) -> str | None:
    """Why fields of a config do not go together (None: they do); ``values``: the config's fields.

    The server scenario's own rules are ``config_server.server_problem``'s.
    """
    if values["batching"] == "continuous" and (problem := _continuous_problem(values)):
        return problem
    # transformers compiles generate()'s decode step only with a static cache (fixed shapes)
    if values["compile"] != "off" and values["cache"] != "static":
        return (
            f"compile: {values['compile']} needs cache: static (a compiled or captured decode step needs "
            "a static KV cache); set cache: static, or compile: off"
        )
    if values["min_window_s"] > 0:
        if values["scenario"] == "server":
            return (
                "min_window_s: not available with scenario: server (its window is the request load; raise n)"
            )
        if not values["warmup_batches"] and values["warmup_settle_cv_pct"] is None:
            return "min_window_s needs at least one warm-up batch to time: set warmup_batches >= 1"
    if values["warmup_power_settle_pct"] is not None and values["scenario"] == "server":
        return (
            "warmup_power_settle_pct: not available with scenario: server (its warm-up is requests to the "
            "server, not batches timed in this process)"
        )
    return None


def _continuous_problem(values: Mapping[str, Any]) -> str | None:
    """Why ``batching: continuous`` (transformers' ``generate_batch``, in process) cannot run with these."""
    if values["scenario"] == "server":
        return (
            "batching: continuous is the in-process scheduler; with scenario: server the server batches "
            "(e.g. 'transformers serve --continuous-batching'): remove batching, or set scenario: in_process"
        )
    if values["compile"] != "off":
        return (
            f"batching: continuous runs generate_batch's own forward passes, which compile: "
            f"{values['compile']} does not reach; set compile: off"
        )
    if values["cache"] != "dynamic":
        return (
            "batching: continuous keeps generate_batch's own paged KV cache; set cache: dynamic (the default)"
        )
    if values["device_map"] is not None:
        return "batching: continuous keeps its KV cache on one device; remove device_map"
    if not values["warmup_batches"] and values["warmup_settle_cv_pct"] is None:
        return (
            "batching: continuous builds its manager (KV cache, CUDA graphs) in the first call: set "
            "warmup_batches >= 1 so that it is not measured"
        )
    return None
