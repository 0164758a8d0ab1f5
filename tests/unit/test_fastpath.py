"""Fast generation paths (static cache, compile, attention) give the eager path's tokens; tiny models, CPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llem_mlflow.backends import fastpath  # noqa: E402
from llem_mlflow.backends.catalogue import shipped_config  # noqa: E402
from llem_mlflow.backends.fastpath import FastPath  # noqa: E402
from llem_mlflow.backends.hub import config_from_dict  # noqa: E402
from llem_mlflow.config import ExperimentConfig, load_config  # noqa: E402
from llem_mlflow.errors import ConfigError  # noqa: E402

MODELS = ["llem/tiny-gpt2", "llem/tiny-llama"]
PAD, EOS = 0, 1
PROMPT_LEN, NEW_TOKENS = 8, 6
#: aot_eager traces the decode step as inductor would (dynamo + AOT autograd) without its slow C++ build.
TRACE_BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Compiled-code caches start and end empty (each model instance would count as a recompile)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def build(name: str, attention: str = "auto", seed: int = 0) -> Any:
    """Seeded random weights from the shipped config, on CPU in fp32, as the backend builds them."""
    from transformers import AutoModelForCausalLM

    auto_model: Any = AutoModelForCausalLM
    kwargs = fastpath.load_kwargs(FastPath(attention=attention))
    torch.manual_seed(seed)
    return auto_model.from_config(config_from_dict(shipped_config(name)), **kwargs).eval()


def prompts(rows: int) -> tuple[Any, Any]:
    """Left-padded prompts (row 0 has 3 pad tokens), as the backend's ``left_pad`` makes them."""
    ids = torch.randint(2, 1000, (3, PROMPT_LEN), generator=torch.Generator().manual_seed(7))[:rows]
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = PAD, 0
    return ids, mask


def generate(model: Any, rows: int = 3, **fields: Any) -> Any:
    """Greedy, exactly NEW_TOKENS new tokens (EOS ignored), as the backend calls generate()."""
    from transformers import GenerationConfig

    config_cls: Any = GenerationConfig
    config = config_cls(
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        do_sample=False,
        num_beams=1,
        pad_token_id=PAD,
        eos_token_id=EOS,
        **fields,
    )
    ids, mask = prompts(rows)
    with torch.inference_mode():
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=config)


def options(cache: str = "static", compile: str = "off") -> ExperimentConfig:
    return ExperimentConfig(
        cache=cache, compile=compile, max_input_tokens=PROMPT_LEN, max_output_tokens=NEW_TOKENS
    )


# -- config


def test_defaults_are_the_eager_path() -> None:
    cfg = ExperimentConfig()
    assert (cfg.cache, cfg.compile, cfg.attention) == ("dynamic", "off", "auto")
    assert fastpath.load_kwargs(cfg) == {} and fastpath.generate_kwargs(cfg) == {}


def test_compile_without_a_static_cache_is_refused_with_the_remedy() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(compile="reduce-overhead")
    assert "compile: reduce-overhead needs cache: static" in str(caught.value)
    assert "set cache: static" in str(caught.value)
    assert load_config(compile="reduce-overhead", cache="static").compile == "reduce-overhead"


@pytest.mark.parametrize(
    ("field", "value"), [("cache", "paged"), ("compile", "fast"), ("attention", "flash_attention_2")]
)
def test_unknown_values_name_the_field(field: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(**{field: value})
    assert f"{field}: Input should be" in str(caught.value)


# -- what fastpath asks transformers for


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_load_kwargs_name_the_attention_implementation(attention: str) -> None:
    assert fastpath.load_kwargs(ExperimentConfig(attention=attention)) == {"attn_implementation": attention}


def test_static_cache_without_compile_turns_auto_compile_off() -> None:
    assert fastpath.generate_kwargs(options()) == {
        "cache_implementation": "static",
        "max_cache_len": PROMPT_LEN + NEW_TOKENS,  # one length for every call: no recompile
        "disable_compile": True,  # transformers compiles a static cache on CUDA by default
    }


@pytest.mark.parametrize("mode", ["default", "reduce-overhead", "max-autotune"])
def test_compile_modes_become_generates_compile_config(mode: str) -> None:
    fields = fastpath.generate_kwargs(options(compile=mode))
    compile_config = fields.pop("compile_config")
    assert fields == {"cache_implementation": "static", "max_cache_len": PROMPT_LEN + NEW_TOKENS}
    assert (compile_config.mode, compile_config.dynamic, compile_config.fullgraph) == (mode, False, False)
    assert compile_config._compile_all_devices is True
    assert compile_config == fastpath.compile_config(mode)  # equal configs reuse generate()'s compiled call


def test_warmup_groups_cover_each_batch_size_when_compiling() -> None:
    groups = [[[1], [2], [3]], [[4], [5], [6]], [[7], [8]]]
    assert fastpath.warmup_groups(options(), groups) == []
    assert fastpath.warmup_groups(options(compile="default"), groups) == [groups[0], groups[2]]


def test_prepare_warns_about_compile_on_cpu() -> None:
    model = build("llem/tiny-gpt2")
    assert fastpath.prepare(model, options()) == []
    warnings = fastpath.prepare(model, options(compile="default"))
    assert len(warnings) == 1 and "on CPU" in warnings[0]
    assert model.generation_config.compile_config.mode == "default"


# -- same tokens as eager generate() with a dynamic cache


@pytest.mark.parametrize("name", MODELS)
def test_static_cache_gives_the_same_tokens(name: str) -> None:
    model = build(name)
    full, ragged = generate(model), generate(model, rows=2)
    fields = fastpath.generate_kwargs(options())
    assert torch.equal(generate(model, **fields), full)
    assert torch.equal(generate(model, rows=2, **fields), ragged)  # a smaller last batch: a new cache
    assert model._previous_max_cache_length == PROMPT_LEN + NEW_TOKENS  # a StaticCache of our length
    assert not hasattr(model, "_compiled_call")


def test_prepare_sets_the_path_for_calls_that_do_not_name_it() -> None:
    model = build("llem/tiny-llama")
    reference = generate(model)
    fastpath.prepare(model, options())
    assert torch.equal(generate(model), reference)  # a per-call config inherits the model's fields
    assert model._previous_max_cache_length == PROMPT_LEN + NEW_TOKENS


@pytest.mark.parametrize("name", MODELS)
def test_attention_implementations_give_the_same_tokens(name: str) -> None:
    reference = generate(build(name, attention="eager"))
    for attention in ("sdpa", "auto"):
        model = build(name, attention=attention)
        assert fastpath.resolved_attention(model) == "sdpa"
        assert torch.equal(generate(model), reference)
    assert fastpath.resolved_attention(build(name, attention="eager")) == "eager"


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize(
    ("name", "batches"),
    [("llem/tiny-gpt2", [3]), ("llem/tiny-llama", [3, 2, 3])],
    ids=["gpt2", "llama-ragged-batch"],
)
def test_compiled_decode_gives_the_same_tokens(name: str, batches: list[int]) -> None:
    model = build(name)
    expected = {rows: generate(model, rows=rows) for rows in set(batches)}
    fields = fastpath.generate_kwargs(options(compile="reduce-overhead"))
    fields["compile_config"].backend = TRACE_BACKEND
    for rows in batches:  # a smaller batch compiles its own graph; the full one then reuses its own
        assert torch.equal(generate(model, rows=rows, **fields), expected[rows])
    assert hasattr(model, "_compiled_call")  # generate() ran the decode steps through torch.compile


@pytest.mark.skipif(
    os.environ.get("LLEM_TEST_INDUCTOR") != "1",
    reason="inductor's C++ build takes ~35 s per graph on CPU; set LLEM_TEST_INDUCTOR=1 to run it",
)
@pytest.mark.usefixtures("fresh_dynamo")
def test_inductor_decode_gives_the_same_tokens() -> None:
    model = build("llem/tiny-gpt2")
    reference = generate(model)
    assert torch.equal(generate(model, **fastpath.generate_kwargs(options(compile="default"))), reference)
    assert hasattr(model, "_compiled_call")
