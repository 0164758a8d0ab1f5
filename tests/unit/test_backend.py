"""TransformersBackend on tiny 2-layer models (CPU, fp32), offline."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llem_mlflow.backends import hf, hub, runtime  # noqa: E402
from llem_mlflow.backends.catalogue import shipped_config, shipped_models  # noqa: E402
from llem_mlflow.backends.hf import TransformersBackend  # noqa: E402
from llem_mlflow.backends.hub import config_from_dict, hub_reachable  # noqa: E402
from llem_mlflow.backends.runtime import backend_versions, cuda_available  # noqa: E402
from llem_mlflow.backends.shape import config_shape, model_shape  # noqa: E402
from llem_mlflow.backends.timing import StepTimer, step_timings  # noqa: E402
from llem_mlflow.backends.tokenizers import BYTE_FALLBACK_NAME  # noqa: E402
from llem_mlflow.backends.tokens import left_pad, output_lengths  # noqa: E402
from llem_mlflow.errors import BackendError, ConfigError  # noqa: E402
from llem_mlflow.protocols import Backend, BatchStats, ModelFacts, ModelShape  # noqa: E402
from tests.fakes import FakeBackend  # noqa: E402
from tests.helpers_models import CACHED_COMMIT, EOS_ID, make_cached_model, make_local_model  # noqa: E402

PROMPTS = ["hello world", "a", "the quick brown fox jumps"]  # 11, 1, 25 characters


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def hf_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF hub cache per test: the developer's real cache never changes an outcome."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path_factory.mktemp("hf-cache")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_local_model(tmp_path_factory.mktemp("tiny-gpt2"), "llem/tiny-gpt2")


@pytest.fixture(scope="module")
def llama_weights_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_local_model(tmp_path_factory.mktemp("tiny-llama"), "llem/tiny-llama", with_weights=True)
    # A checkpoint generation config that would make generate() sample and warn if merged in.
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=0.7, top_p=0.9, max_length=5)
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


def loaded(model: str, **kwargs: Any) -> TransformersBackend:
    backend = TransformersBackend(model, device="cpu", **kwargs)
    backend.load()
    return backend


def test_random_weights_are_normal_with_the_initializer_range() -> None:
    backend = loaded("llem/tiny-gpt2", weights="random")
    matrices = [p for p in backend.model.parameters() if p.dim() == 2]
    assert len(matrices) == 10  # wte, wpe, 4 per layer
    for weight in matrices:
        std = weight.float().std().item()
        # c_proj layers use the GPT-2 scaled init 0.02 / sqrt(2 * n_layer) = 0.01
        assert 0.008 < std < 0.024, std
        assert abs(weight.float().mean().item()) < 0.005


def test_random_weights_are_seeded() -> None:
    first = loaded("llem/tiny-llama", weights="random", seed=7).model.state_dict()
    again = loaded("llem/tiny-llama", weights="random", seed=7).model.state_dict()
    other = loaded("llem/tiny-llama", weights="random", seed=8).model.state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(first[name], again[name])
    assert not torch.equal(first[name], other[name])


def test_shape_of_tiny_gpt2_by_hand() -> None:
    backend = TransformersBackend("llem/tiny-gpt2", weights="random", device="cpu")
    info = backend.load()
    # per layer: c_attn 64x192 + attn c_proj 64x64 + c_fc 64x256 + mlp c_proj 256x64 = 49152
    assert info.shape == ModelShape(
        body_matmul_params=2 * 49152, lm_head_params=1000 * 64, n_layers=2, attn_dim=64, vocab_size=1000,
        kv_dim=64,
    )  # fmt: skip
    assert (info.weights, info.precision, info.device, info.cuda_devices, info.warnings) == (
        "random", "fp32", "cpu", [], [],
    )  # fmt: skip
    assert info.load_time_s > 0


def test_shape_of_tiny_llama_by_hand() -> None:
    info = TransformersBackend("llem/tiny-llama", weights="random", device="cpu").load()
    # per layer: q 64x64 + k 32x64 + v 32x64 + o 64x64 + gate/up/down 3 x 64x128 = 36864
    assert info.shape == ModelShape(73728, 64000, 2, 64, 1000, kv_dim=32)  # k, v: 32 wide (grouped)


def test_bf16_random_model_on_cpu() -> None:
    backend = TransformersBackend("llem/tiny-llama", weights="random", precision="bf16", device="cpu")
    assert backend.load().precision == "bf16"
    assert next(backend.model.parameters()).dtype == torch.bfloat16


def test_tokenize_truncates_and_counts_characters(gpt2_folder: Path) -> None:
    backend = loaded(str(gpt2_folder), weights="random")
    rows = backend.tokenize(PROMPTS, max_input_tokens=16)
    assert [len(row) for row in rows] == [11, 1, 16]


def test_generate_counts_exactly_with_different_prompt_lengths(gpt2_folder: Path) -> None:
    backend = loaded(str(gpt2_folder), weights="random")
    rows = backend.tokenize(PROMPTS, max_input_tokens=16)
    stats = backend.generate(rows, max_output_tokens=7)
    assert dataclasses.replace(stats, prefill_s=None, decode_step_s=()) == BatchStats(
        input_tokens=28,
        output_tokens=21,
        padded_input_len=16,
        new_tokens=7,
        batch_size=3,
        input_lens=(11, 1, 16),
        output_lens=(7, 7, 7),
    )


# ---------------------------------------------------------------- step timings


@pytest.mark.parametrize("model", ["llem/tiny-gpt2", "llem/tiny-llama"])
@pytest.mark.parametrize("max_output_tokens", [1, 2, 9])
def test_generate_times_the_prefill_and_every_decode_step(model: str, max_output_tokens: int) -> None:
    backend = loaded(model, weights="random")
    stats = backend.generate([[5, 6, 7, 8], [9, 10]], max_output_tokens=max_output_tokens)
    assert stats.new_tokens == max_output_tokens
    assert stats.prefill_s is not None and stats.prefill_s > 0
    assert len(stats.decode_step_s) == max_output_tokens - 1
    assert all(step > 0 for step in stats.decode_step_s)


class _GenerateSpy:
    """Wraps ``model.generate``: records each call's keyword arguments and output."""

    def __init__(self, model: Any) -> None:
        self.real = model.generate
        self.calls: list[tuple[dict[str, Any], Any]] = []

    def __call__(self, **kwargs: Any) -> Any:
        out = self.real(**kwargs)
        self.calls.append((kwargs, out))
        return out


@pytest.mark.parametrize("model", ["llem/tiny-gpt2", "llem/tiny-llama"])
def test_timed_generate_gives_the_tokens_of_a_plain_generate(model: str) -> None:
    backend = loaded(model, weights="random")
    spy = _GenerateSpy(backend.model)
    backend.model.generate = spy
    stats = backend.generate([[5, 6, 7, 8, 9, 10], [11, 12], [13]], max_output_tokens=12)
    [(kwargs, timed_out)] = spy.calls
    [timer] = kwargs.pop("logits_processor")
    assert isinstance(timer, StepTimer) and timer.marks == 12 + 1  # start + one per new token
    assert kwargs["generation_config"].min_new_tokens == 12 and kwargs["generation_config"].do_sample is False
    with torch.inference_mode():
        plain_out = spy.real(**kwargs)  # the same call without the timing processor
    assert torch.equal(timed_out, plain_out)
    assert stats.new_tokens == 12 and len(stats.decode_step_s) == 11
    again = backend.generate([[5, 6]], max_output_tokens=3)  # the timer is kept and restarted
    assert spy.calls[1][0]["logits_processor"][0] is timer and timer.marks == 3 + 1
    assert len(again.decode_step_s) == 2


def test_eos_masking_still_applies_with_the_timer(gpt2_folder: Path) -> None:
    backend = loaded(str(gpt2_folder), weights="random")

    def eos_wins(module: Any, inputs: Any, logits: Any) -> Any:
        logits[..., EOS_ID] += 1e4
        return logits

    backend.model.get_output_embeddings().register_forward_hook(eos_wins)
    spy = _GenerateSpy(backend.model)
    backend.model.generate = spy
    stats = backend.generate([[5, 6, 7]], max_output_tokens=4)
    [(_, out)] = spy.calls
    assert EOS_ID not in out[0, 3:].tolist()  # min_new_tokens kept EOS out, the timer did not undo it
    assert len(stats.decode_step_s) == 3


def test_step_timer_returns_the_scores_untouched_and_marks_each_call() -> None:
    timer = StepTimer(torch.device("cpu"))
    scores = torch.randn(2, 5)
    before = scores.clone()
    timer.start()
    assert timer.intervals_s() == []
    for _ in range(3):
        assert timer(None, scores) is scores
    assert torch.equal(scores, before)
    assert timer.marks == 4
    intervals = timer.intervals_s()
    assert len(intervals) == 3 and all(i >= 0 for i in intervals)
    timer.start()  # a new start forgets earlier marks
    assert timer.marks == 1


def test_step_timings_keep_new_tokens_marks_and_refuse_missing_ones() -> None:
    assert step_timings([0.5, 0.1, 0.2], new_tokens=3) == (0.5, (0.1, 0.2))
    assert step_timings([0.5, 0.1, 0.2, 0.3], new_tokens=3) == (0.5, (0.1, 0.2))  # an undone extra step
    assert step_timings([0.5], new_tokens=1) == (0.5, ())
    assert step_timings([0.5, 0.1], new_tokens=3) == (None, ())  # missed steps: no wrong numbers
    assert step_timings([], new_tokens=0) == (None, ())


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
def test_step_timer_on_cuda_records_events_only() -> None:
    backend = TransformersBackend("llem/tiny-llama", weights="random", device="cuda")
    backend.load()
    spy = _GenerateSpy(backend.model)
    backend.model.generate = spy
    stats = backend.generate([[5, 6, 7, 8], [9]], max_output_tokens=16)
    [(kwargs, timed_out)] = spy.calls
    kwargs.pop("logits_processor")
    with torch.inference_mode():
        assert torch.equal(timed_out, spy.real(**kwargs))
    assert stats.prefill_s is not None and stats.prefill_s > 0
    assert len(stats.decode_step_s) == 15 and all(step > 0 for step in stats.decode_step_s)


def test_eos_never_ends_a_row_early(gpt2_folder: Path) -> None:
    backend = loaded(str(gpt2_folder), weights="random")

    def eos_wins(module: Any, inputs: Any, logits: Any) -> Any:
        logits[..., EOS_ID] += 1e4  # greedy would pick EOS at every step
        return logits

    backend.model.get_output_embeddings().register_forward_hook(eos_wins)
    stats = backend.generate([[5, 6, 7], [8]], max_output_tokens=6)
    assert (stats.output_tokens, stats.new_tokens) == (12, 6)


def test_pretrained_folder_loads_its_weights_and_generates_quietly(
    llama_weights_folder: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    backend = TransformersBackend(str(llama_weights_folder), device="cpu")
    info = backend.load()
    assert (info.weights, info.warnings) == ("pretrained", [])
    saved = load_file(str(llama_weights_folder / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(backend.model.state_dict()[name], saved[name])
    capfd.readouterr()
    stats = backend.generate(backend.tokenize(PROMPTS, 16), max_output_tokens=9)
    assert stats.output_tokens == 27
    err = capfd.readouterr().err
    assert "max_length" not in err and "do_sample" not in err and "temperature" not in err, err


def test_folder_without_weights_fails_for_pretrained_and_falls_back_for_auto(gpt2_folder: Path) -> None:
    with pytest.raises(BackendError, match="no weight files"):
        TransformersBackend(str(gpt2_folder), weights="pretrained", device="cpu").load()
    info = TransformersBackend(str(gpt2_folder), weights="auto", device="cpu").load()
    assert info.weights == "random" and "RANDOM WEIGHTS" in info.warnings[0]


def test_auto_falls_back_to_random_gpt2_offline(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llem_mlflow.backends.hf"):
        info = TransformersBackend("gpt2", device="cpu").load()
    assert info.weights == "random"
    assert len(info.warnings) == 1 and "RANDOM WEIGHTS" in info.warnings[0]
    assert any("RANDOM WEIGHTS" in record.getMessage() for record in caplog.records)
    assert info.shape == ModelShape(84_934_656, 38_597_376, 12, 768, 50257, kv_dim=768)


def test_pretrained_without_a_tokenizer_says_what_to_do(tmp_path: Path) -> None:
    folder = make_local_model(tmp_path / "m", "llem/tiny-gpt2", with_tokenizer=False, with_weights=True)
    backend = TransformersBackend(str(folder), weights="pretrained", device="cpu")
    with pytest.raises(BackendError, match="dataset=synthetic") as caught:
        backend.tokenize(["hi"], 4)
    assert "no tokenizer files" in str(caught.value) and "weights=pretrained" not in str(caught.value)
    with pytest.raises(BackendError, match="HF_HUB_OFFLINE"):
        TransformersBackend("gpt2", weights="pretrained", device="cpu").tokenizer_name()


@pytest.mark.parametrize("weights", ["random", "auto"])
def test_unknown_model_lists_the_shipped_models(weights: str) -> None:
    with pytest.raises(BackendError) as caught:
        TransformersBackend("no-such-org/no-such-model", weights=weights, device="cpu").load()
    assert "llem/tiny-gpt2" in str(caught.value) and "gpt2-xl" in str(caught.value)


def test_hints_never_suggest_the_weights_already_in_effect(tmp_path: Path) -> None:
    random_unknown = TransformersBackend("no-such-org/no-such-model", weights="random", device="cpu")
    for attempt in (random_unknown.load, random_unknown.inspect):
        with pytest.raises(BackendError) as caught:
            attempt()
        assert "weights=random" not in str(caught.value), str(caught.value)
    small = make_local_model(
        tmp_path / "small", "llem/tiny-gpt2", False, config_overrides={"vocab_size": 100}
    )
    with pytest.raises(BackendError, match="vocab_size >= 256") as caught:
        TransformersBackend(str(small), weights="random", device="cpu").tokenize(["hi"], 4)
    assert "weights=random" not in str(caught.value) and "dataset=synthetic" in str(caught.value)


# ---------------------------------------------------------------- inspect, tokenizer before load, revision


def test_real_and_fake_backends_have_every_protocol_method() -> None:
    members = {name for name in vars(Backend) if not name.startswith("_")}
    assert {"inspect", "tokenizer_name", "tokenize", "load", "generate"} <= members
    for cls in (TransformersBackend, FakeBackend):
        assert [m for m in sorted(members) if not callable(getattr(cls, m, None))] == [], cls
    fake = FakeBackend(context_length=77)
    assert fake.inspect() == ModelFacts(vocab_size=1000, context_length=77, config_source="shipped config")
    assert fake.tokenizer_name() and fake.events == ["inspect"]


@pytest.mark.parametrize(
    ("model", "facts"),
    [
        ("gpt2", ModelFacts(50257, 1024, "shipped config")),
        ("llem/tiny-llama", ModelFacts(1000, 256, "shipped config")),
        ("folder", ModelFacts(1000, 512, "local folder")),
        ("llem-test/cached-llama", ModelFacts(1000, 256, "HF cache")),
    ],
)
def test_inspect_reads_the_config_alone(
    model: str, facts: ModelFacts, tmp_path: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_device(*args: Any) -> None:
        raise AssertionError("inspect() must not look for a device")

    for module in (hf, runtime):
        monkeypatch.setattr(module, "resolve_device", no_device)
        monkeypatch.setattr(module, "cuda_available", no_device)
    make_cached_model(hf_cache, "llem-test/cached-llama", "llem/tiny-llama", with_tokenizer=False)
    if model == "folder":
        overrides = {"max_position_embeddings": 512}
        model = str(make_local_model(tmp_path / "m", "llem/tiny-llama", False, config_overrides=overrides))
    backend = TransformersBackend(model, weights="pretrained", device="cuda")
    assert backend.inspect() == facts
    assert backend.model is None


def test_load_does_not_fetch_the_config_inspect_fetched(
    hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetched: list[str] = []
    real_hub_call = hub.hub_call

    def counting(load: Any, model: str, what: str, *args: Any) -> Any:
        fetched.append(what)
        return real_hub_call(load, model, what, *args)

    for module in (hub, hf):
        monkeypatch.setattr(module, "hub_call", counting)
    make_cached_model(hf_cache, "llem-test/cached-gpt2", with_tokenizer=False)
    backend = TransformersBackend("llem-test/cached-gpt2", weights="random", device="cpu")
    assert backend.inspect().config_source == "HF cache"
    info = backend.load()
    assert fetched == ["the config"]
    assert (info.weights, info.shape.vocab_size, info.revision) == ("random", 1000, None)


def test_pretrained_from_the_hf_cache_records_its_commit_and_tokenizer(
    hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    make_cached_model(hf_cache, "llem-test/cached-llama", "llem/tiny-llama", with_weights=True)
    config_reads: list[str] = []
    real_from_pretrained = transformers.AutoConfig.from_pretrained

    def counting(name: Any, *args: Any, **kwargs: Any) -> Any:
        config_reads.append(str(name))
        return real_from_pretrained(name, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", counting)
    backend = TransformersBackend("llem-test/cached-llama", weights="pretrained", device="cpu")
    assert backend.inspect().config_source == "HF cache"
    assert backend.tokenizer_name() == "llem-test/cached-llama (HF cache)"
    config_reads.clear()
    info = backend.load()
    assert (info.weights, info.revision, info.warnings) == ("pretrained", CACHED_COMMIT, [])
    assert config_reads == []  # load() reused the config inspect() read
    stats = backend.generate(backend.tokenize(PROMPTS, 16), max_output_tokens=2)
    assert stats.input_tokens == 28


def test_revision_is_none_for_random_weights_and_a_plain_folder(llama_weights_folder: Path) -> None:
    assert TransformersBackend(str(llama_weights_folder), device="cpu").load().revision is None
    assert (
        TransformersBackend(str(llama_weights_folder), weights="random", device="cpu").load().revision is None
    )


def test_tokenize_works_before_load_with_the_folder_tokenizer(gpt2_folder: Path) -> None:
    backend = TransformersBackend(str(gpt2_folder), weights="random", device="cpu")
    rows = backend.tokenize(PROMPTS, max_input_tokens=16)
    assert [len(row) for row in rows] == [11, 1, 16] and backend.model is None
    assert backend.tokenizer_name() == f"{gpt2_folder} (local folder)"
    backend.load()
    assert backend.generate(rows, max_output_tokens=3).output_tokens == 9


@pytest.mark.parametrize("weights", ["random", "auto"])
def test_random_gpt2_offline_tokenizes_bytes_before_load(
    weights: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = TransformersBackend("gpt2", weights=weights, device="cpu")
    with caplog.at_level(logging.WARNING, logger="llem_mlflow.backends.hf"):
        rows = backend.tokenize(["héllo", "abc"], max_input_tokens=4)
    assert rows == [[104, 195, 169, 108], [97, 98, 99]]  # UTF-8 bytes, truncated, no special tokens
    assert backend.tokenizer_name() == BYTE_FALLBACK_NAME == "byte-level fallback (UTF-8 bytes as ids)"
    assert backend.model is None
    assert [r.getMessage() for r in caplog.records if BYTE_FALLBACK_NAME in r.getMessage()]


def test_byte_fallback_warning_reaches_the_loaded_model() -> None:
    backend = TransformersBackend("llem/tiny-gpt2", weights="random", device="cpu")
    rows = backend.tokenize(["hi there", "x"], max_input_tokens=8)
    info = backend.load()
    assert len(info.warnings) == 1 and BYTE_FALLBACK_NAME in info.warnings[0]
    stats = backend.generate(rows, max_output_tokens=3)
    assert (stats.input_tokens, stats.output_tokens) == (9, 6)


def test_pretrained_hub_model_offline_says_how_to_fix() -> None:
    with pytest.raises(BackendError, match="HF_HUB_OFFLINE"):
        TransformersBackend("no-such-org/no-such-model", weights="pretrained", device="cpu").load()


def test_folder_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no config.json"):
        TransformersBackend(str(tmp_path), weights="random", device="cpu").load()


@pytest.mark.skipif(cuda_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_an_error() -> None:
    with pytest.raises(BackendError, match="device=cuda"):
        TransformersBackend("llem/tiny-gpt2", weights="random", device="cuda").load()


def test_invalid_arguments_and_generate_before_load() -> None:
    with pytest.raises(ConfigError):
        TransformersBackend("gpt2", weights="maybe")
    with pytest.raises(ConfigError):
        TransformersBackend("gpt2", precision="fp8")
    with pytest.raises(BackendError, match="load"):
        TransformersBackend("gpt2").generate([[1, 2]], 3)


def test_hub_reachable_is_false_offline_and_for_a_closed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub_reachable() is False  # HF_HUB_OFFLINE=1 from the autouse fixture
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert hub_reachable(timeout_s=2.0) is False


def test_unreachable_hub_falls_back_without_touching_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    offline_before = hub_constants.HF_HUB_OFFLINE
    info = TransformersBackend("llem/tiny-gpt2", device="cpu").load()
    assert info.weights == "random" and "unreachable" in info.warnings[0]
    assert hub_constants.HF_HUB_OFFLINE is offline_before  # the forced offline mode was undone


def test_counting_helpers() -> None:
    assert output_lengths([[5, 2, 7, 2], [1, 1, 1], [2, 9]], {2}) == (2, 3, 1)
    assert left_pad([[4, 5, 6], [7]], pad_id=0) == ([[4, 5, 6], [0, 0, 7]], [[1, 1, 1], [0, 0, 1]])


def test_versions_report_the_installed_packages() -> None:
    import transformers

    versions = backend_versions()
    assert versions["torch"] == torch.__version__
    assert versions["transformers"] == transformers.__version__
    assert set(versions) == {"torch", "transformers", "cuda_runtime"}
    assert TransformersBackend("gpt2").versions() == versions


# ---------------------------------------------------------------- the model's shape from its config alone

_SHIPPED_ARCHITECTURES = sorted(
    {json.dumps(shipped_config(name), sort_keys=True) for name in shipped_models()}
)
_TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4}


def _meta_model(config: Any) -> Any:
    """The architecture on the meta device: every parameter's shape, no memory, no init."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize(
    "config_json", _SHIPPED_ARCHITECTURES, ids=lambda text: json.loads(text)["model_type"]
)
def test_config_shape_equals_the_module_walk_for_every_shipped_config(config_json: str) -> None:
    config = config_from_dict(json.loads(config_json))
    assert config_shape(config) == model_shape(_meta_model(config))


@pytest.mark.parametrize("model", ["llem/tiny-gpt2", "llem/tiny-llama"])
def test_config_shape_equals_the_module_walk_on_a_random_weight_build(model: str) -> None:
    backend = loaded(model, weights="random")
    assert config_shape(backend.model.config) == model_shape(backend.model)


@pytest.mark.parametrize(
    ("model_type", "extra"),
    [
        ("llama", {"num_key_value_heads": 2, "tie_word_embeddings": True, "attention_bias": True}),
        ("mistral", {"num_key_value_heads": 1}),
        ("qwen2", {"num_key_value_heads": 2}),
        ("qwen3", {"num_key_value_heads": 2, "head_dim": 32}),
        ("gpt2", {"n_inner": 100}),
    ],
)
def test_config_shape_knows_each_listed_family(model_type: str, extra: dict[str, Any]) -> None:
    from transformers import AutoConfig

    settings = _TINY if model_type != "gpt2" else {"n_embd": 64, "n_layer": 2, "n_head": 4}
    config = AutoConfig.for_model(model_type, vocab_size=300, **settings, **extra)
    assert config_shape(config) == model_shape(_meta_model(config))


def test_an_unknown_family_has_no_config_shape_and_the_backend_walks_its_modules() -> None:
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "opt", hidden_size=32, ffn_dim=48, num_hidden_layers=2, num_attention_heads=4
    )
    model = _meta_model(config)
    assert config_shape(config) is None
    assert TransformersBackend("llem/tiny-gpt2")._shape(model) == model_shape(model)
