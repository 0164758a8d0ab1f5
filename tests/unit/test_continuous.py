"""batching: continuous: transformers' generate_batch gives eager generate()'s tokens, exact counts, one call
per pass of the prompt set; its refusals; its hash (the default's unchanged). CPU, tiny random models."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llem_mlflow.backends import continuous, generation  # noqa: E402
from llem_mlflow.backends.catalogue import shipped_config  # noqa: E402
from llem_mlflow.backends.continuous import ContinuousBatching  # noqa: E402
from llem_mlflow.backends.fastpath import FastPath  # noqa: E402
from llem_mlflow.backends.hf import TransformersBackend  # noqa: E402
from llem_mlflow.backends.hub import config_from_dict  # noqa: E402
from llem_mlflow.backends.timing import StepTimer  # noqa: E402
from llem_mlflow.backends.tokens import clean_generation_config  # noqa: E402
from llem_mlflow.config import ExperimentConfig, load_config  # noqa: E402
from llem_mlflow.config_gpu import with_gpu_defaults  # noqa: E402
from llem_mlflow.errors import BackendError, ConfigError  # noqa: E402
from llem_mlflow.results.identity import resolve  # noqa: E402
from llem_mlflow.run.execute import execute, run_experiment  # noqa: E402
from tests.fakes import RecordingBackend, small_config  # noqa: E402

MODELS = ["llem/tiny-gpt2", "llem/tiny-llama"]
NEW_TOKENS = 7
#: Five prompts of four lengths: with max_requests 2 the scheduler must interleave them.
PROMPTS = [
    [5, 17, 300, 42, 9, 77],
    [11, 12],
    [13, 14, 15, 16, 817, 18, 19, 20, 400],
    [3, 4, 5, 6, 7],
    [900, 8],
]
CPU_RANDOM = {"weights": "random", "precision": "fp32", "device": "cpu", "revision": None}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def build(name: str, eos: int | None = None) -> Any:
    """Seeded random weights with a wide init (0.3: peaked logits, so a wrong cache slot changes tokens)."""
    from transformers import AutoModelForCausalLM

    config = shipped_config(name) or {}
    config["initializer_range"] = 0.3
    if eos is not None:
        config["eos_token_id"] = eos
    auto_model: Any = AutoModelForCausalLM
    torch.manual_seed(0)
    model = auto_model.from_config(config_from_dict(config)).eval()
    model.generation_config = clean_generation_config(model.generation_config)  # as the backend's load()
    return model


def eager(model: Any, prompt: list[int]) -> list[int]:
    """The static path's new tokens for ``prompt`` alone: eager generate() as the backend binds it."""
    timer = StepTimer(torch.device("cpu"))
    call = generation.prepare(model, [prompt], 0, NEW_TOKENS, FastPath(), timer)
    with torch.inference_mode():
        timer.start()
        out = call.generate()
    return [int(t) for t in out[0, call.padded_len :].tolist()]


def continuous_tokens(model: Any, max_requests: int) -> list[list[int]]:
    """Every prompt's new tokens from one generate_batch call, as the backend makes them."""
    return ContinuousBatching(max_requests).new_tokens(model, PROMPTS, NEW_TOKENS, None, "cpu")


# -- tokens: the same as eager generate() for every prompt, however the scheduler groups them


@pytest.mark.parametrize("max_requests", [2, 8])
@pytest.mark.parametrize("name", MODELS)
def test_continuous_gives_eager_generates_tokens_for_every_prompt(name: str, max_requests: int) -> None:
    model = build(name)
    reference = [eager(model, p) for p in PROMPTS]
    assert continuous_tokens(model, max_requests) == reference
    assert len({tuple(r) for r in reference}) == len(PROMPTS)  # distinct rows: a swap would be caught


def test_eos_is_never_chosen_as_static_generate_never_chooses_it() -> None:
    """EOS = a token the free model picks: both paths must pick the runner-up and go on to NEW_TOKENS."""
    free = continuous_tokens(build("llem/tiny-gpt2", eos=999), 2)  # 999: not generated here, nothing masked
    eos_id = free[0][2]
    model = build("llem/tiny-gpt2", eos=eos_id)
    reference = [eager(model, p) for p in PROMPTS]
    out = continuous_tokens(model, 2)
    assert out == reference and out != free  # masking EOS changed the tokens: the check had teeth
    assert all(len(row) == NEW_TOKENS and eos_id not in row for row in out)


def test_the_backend_counts_exactly_and_reports_no_step_timings() -> None:
    backend = TransformersBackend(
        "llem/tiny-llama", weights="random", device="cpu", batching=ContinuousBatching(2)
    )
    backend.load()
    stats = backend.generate(PROMPTS, NEW_TOKENS)
    assert (stats.input_tokens, stats.output_tokens) == (sum(map(len, PROMPTS)), len(PROMPTS) * NEW_TOKENS)
    assert stats.output_lens == (NEW_TOKENS,) * 5 and stats.input_lens == (6, 2, 9, 5, 2)
    assert (stats.batch_size, stats.new_tokens, stats.padded_input_len) == (5, NEW_TOKENS, 9)
    assert stats.prefill_s is None and stats.decode_step_s == ()
    kept = backend.model._cached_continuous_batching_manager  # persistent: built once, by the first call
    assert kept.continuous_batching_config.max_requests_per_batch == 2  # batch_size bounds each forward
    assert backend.generate(PROMPTS, 1).output_tokens == 5  # isolated prefill's one-token calls
    backend.release()


def test_a_failed_short_or_missing_request_is_refused() -> None:
    class Out:
        def __init__(self, prompt: list[int], tokens: list[int], error: str | None = None) -> None:
            self.prompt_ids, self.generated_tokens, self.error = prompt, tokens, error

    batch = [[1, 2], [3]]
    good = [Out([1, 2], [7, 7]), Out([3], [8, 8])]
    assert continuous.checked_outputs(batch, good, 2, "cpu") == [[7, 7], [8, 8]]
    with pytest.raises(BackendError, match="1 of 2 requests"):
        continuous.checked_outputs(batch, good[:1], 2, "cpu")
    with pytest.raises(BackendError, match="1 new tokens, not 2"):
        continuous.checked_outputs(batch, [good[0], Out([3], [8])], 2, "cpu")
    with pytest.raises(BackendError, match="request 2 of 2 failed: boom"):
        continuous.checked_outputs(batch, [good[0], Out([3], [], "boom")], 2, "cpu")
    with pytest.raises(BackendError, match="out of memory"):
        continuous.checked_outputs(batch, [good[0], Out([3], [], "CUDA out of memory")], 2, "cuda")


def test_a_transformers_without_generate_batch_is_named() -> None:
    class Old:
        generation_config = clean_generation_config(build("llem/tiny-gpt2").generation_config)
        config = None

    with pytest.raises(BackendError, match="needs transformers' generate_batch.*set batching: static"):
        ContinuousBatching(2).generate(Old(), PROMPTS, NEW_TOKENS, None, "cpu")


# -- config: refusals before anything loads, and GPU defaults that do not apply


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        (
            {"scenario": "server", "server_url": "http://127.0.0.1:1"},
            "with scenario: server the server batches",
        ),
        ({"compile": "graph", "cache": "static"}, "compile: graph does not reach; set compile: off"),
        ({"compile": "reduce-overhead", "cache": "static"}, "set compile: off"),
        ({"cache": "static"}, "own paged KV cache; set cache: dynamic"),
        ({"device_map": "auto"}, "KV cache on one device; remove device_map"),
        ({"warmup_batches": 0}, "set warmup_batches >= 1"),
    ],
)
def test_continuous_refuses_what_it_cannot_run(fields: dict[str, Any], says: str) -> None:
    load_config(**{k: v for k, v in fields.items() if k != "batching"})  # each is fine with static batches
    with pytest.raises(ConfigError, match="batching: continuous") as caught:
        load_config(batching="continuous", **fields)
    assert says in str(caught.value)


def test_gpu_defaults_leave_the_cache_and_compile_of_continuous_alone() -> None:
    cfg, applied = with_gpu_defaults(load_config(batching="continuous"), "cuda")
    assert (cfg.cache, cfg.compile) == ("dynamic", "off") and "compile" not in applied
    assert cfg.min_window_s == 20.0  # the others still apply
    static, _ = with_gpu_defaults(load_config(), "cuda")
    assert (static.cache, static.compile) == ("static", "graph")


# -- hash: continuous is hashed; a static run's resolved settings and hash are what they were


def test_continuous_enters_the_hash_and_static_leaves_resolved_as_it_was() -> None:
    static = resolve(ExperimentConfig(), dataset="synthetic", tokenizer=None, **CPU_RANDOM)
    assert static.measurement_hash() == "a2ed655bdfcb259b"  # test_identity's recipe-7 pin
    assert "batching" not in json.loads(static.model_dump_json())
    cont = resolve(ExperimentConfig(batching="continuous"), dataset="synthetic", tokenizer=None, **CPU_RANDOM)
    assert json.loads(cont.model_dump_json())["batching"] == "continuous"
    assert cont.measurement_hash() != static.measurement_hash()


# -- the measurement: one call per pass holding every prompt; a whole run on CPU


def test_each_pass_is_one_call_with_every_prompt(tmp_path: Path) -> None:
    backend = RecordingBackend()
    cfg = small_config(tmp_path, batching="continuous", cycles=2, isolated_prefill=True)
    outcome = execute(cfg, backend=backend)
    assert outcome.result.status == "completed"
    assert [len(b) for b in backend.batches] == [8] * len(backend.batches)  # never split by batch_size
    assert outcome.result.output_tokens == 2 * 8 * 3  # two cycles of one 8-prompt call
    static = RecordingBackend()
    execute(small_config(tmp_path / "s", cycles=2), backend=static)
    assert {len(b) for b in static.batches} == {2}  # batch_size 2 without it


def test_a_whole_run_with_continuous_batching(tmp_path: Path) -> None:
    cfg = ExperimentConfig(
        model="llem/tiny-gpt2", weights="random", device="cpu", n=5, batch_size=2, max_output_tokens=4,
        batching="continuous", mlflow=False, output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    result = run_experiment(cfg)
    assert result.status == "completed" and result.output_tokens == 5 * 4
    assert result.resolved is not None and result.resolved.batching == "continuous"
    assert result.config.batching == "continuous"


def test_only_the_known_continuous_batching_warnings_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    cb = logging.getLogger(continuous.CB_LOGGER)
    with caplog.at_level(logging.WARNING, logger=continuous.CB_LOGGER):
        cb.warning("Since you passed `persistent_manager=True`, the manager will be kept alive")
        cb.warning("Processor SuppressTokensLogitsProcessor might not be supported by CB.")
        cb.warning("Request 3 failed: out of memory")
    assert [r.getMessage() for r in caplog.records] == [
        "Since you passed `persistent_manager=True`, the manager will be kept alive",  # generate_batch only
        "Request 3 failed: out of memory",
    ]


def test_the_paged_cache_is_sized_to_the_workload_on_every_device() -> None:
    """Not from free memory (a server's choice): max_requests rows of the longest prompt + new tokens."""
    config = ContinuousBatching(4)._cb_config([[1] * 30, [2] * 100, [3] * 5], 28)
    assert config.max_requests_per_batch == 4
    assert config.max_batch_tokens == 3 * 128  # 3 rows (fewer prompts than max_requests) x (100 + 28)
    assert config.num_blocks == 3 * 2  # 128 tokens: one 256-token page each, plus one


def test_release_stops_and_drops_the_kept_manager() -> None:
    backend = TransformersBackend(
        "llem/tiny-gpt2", weights="random", device="cpu", batching=ContinuousBatching(2)
    )
    backend.load()
    backend.generate([[5, 6, 7], [8, 9]], 3)
    model = backend.model
    assert getattr(model, "_cached_continuous_batching_manager", None) is not None
    backend.release()
    assert getattr(model, "_cached_continuous_batching_manager", None) is None
