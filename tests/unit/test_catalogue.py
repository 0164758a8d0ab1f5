"""The shipped model catalogue: names, file mapping and config values."""

from __future__ import annotations

from importlib import resources

import pytest

from llem_mlflow.backends.catalogue import _FILES, context_length, shipped_config, shipped_models


def gpt2_params(cfg: dict[str, int]) -> int:
    """Parameter count of a tied GPT-2 from its config (embeddings, blocks, final norm)."""
    d, layers, vocab, pos = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"], cfg["n_positions"]
    block = 12 * d * d + 13 * d  # qkv + proj + 4x MLP weights and biases, two layer norms
    return vocab * d + pos * d + layers * block + 2 * d


@pytest.mark.parametrize(
    ("name", "dims", "params"),
    [
        ("gpt2", (768, 12, 12), 124_439_808),
        ("openai-community/gpt2-medium", (1024, 24, 16), 354_823_168),
        ("gpt2-large", (1280, 36, 20), 774_030_080),
        ("openai-community/gpt2-xl", (1600, 48, 25), 1_557_611_200),
    ],
)
def test_gpt2_family_matches_the_hub_configs(name: str, dims: tuple[int, int, int], params: int) -> None:
    cfg = shipped_config(name)
    assert cfg is not None
    assert (cfg["n_embd"], cfg["n_layer"], cfg["n_head"]) == dims
    assert (cfg["model_type"], cfg["vocab_size"], cfg["n_positions"]) == ("gpt2", 50257, 1024)
    assert cfg["initializer_range"] == 0.02
    assert gpt2_params(cfg) == params


def test_tinyllama_config_gives_its_published_parameter_count() -> None:
    cfg = shipped_config("TinyLlama/TinyLlama-1.1B-Chat-v1.0")
    assert cfg is not None
    d, ffn, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv_dim = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    per_layer = 2 * d * d + 2 * d * kv_dim + 3 * d * ffn + 2 * d
    total = 2 * cfg["vocab_size"] * d + layers * per_layer + d  # untied head, final norm
    assert total == 1_100_048_384
    assert (cfg["max_position_embeddings"], cfg["rms_norm_eps"], cfg["model_type"]) == (2048, 1e-5, "llama")


def test_tiny_test_architectures() -> None:
    gpt2 = shipped_config("llem/tiny-gpt2")
    llama = shipped_config("llem/tiny-llama")
    assert gpt2 is not None and llama is not None
    assert (gpt2["n_layer"], gpt2["n_embd"], gpt2["n_head"], gpt2["vocab_size"], gpt2["n_positions"]) == (
        2, 64, 4, 1000, 256,
    )  # fmt: skip
    assert (llama["num_hidden_layers"], llama["hidden_size"], llama["intermediate_size"]) == (2, 64, 128)
    assert (llama["num_attention_heads"], llama["num_key_value_heads"], llama["vocab_size"]) == (4, 2, 1000)


def test_every_name_has_a_file_and_every_file_a_name() -> None:
    shipped_files = {
        entry.name
        for entry in resources.files("llem_mlflow").joinpath("models").iterdir()
        if entry.name.endswith(".json")
    }
    assert set(_FILES.values()) == shipped_files
    assert all("/" not in name and ":" not in name for name in shipped_files)
    assert shipped_models() == sorted(_FILES)
    assert all(shipped_config(name) is not None for name in shipped_models())


def test_unknown_name_gives_none_and_results_are_fresh_copies() -> None:
    assert shipped_config("no-such/model") is None
    first = shipped_config("gpt2")
    assert first is not None
    first["n_layer"] = 99
    again = shipped_config("gpt2")
    assert again is not None and again["n_layer"] == 12


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_position_embeddings": 2048, "n_positions": 1}, 2048),
        ({"n_positions": 1024, "n_ctx": 1024}, 1024),
        ({"n_ctx": 512}, 512),
        ({"seq_length": 8192}, 8192),
        ({"max_position_embeddings": None, "seq_length": 4096}, 4096),
        ({"vocab_size": 1000}, None),
        ({"n_positions": True, "n_ctx": 0}, None),
    ],
)
def test_context_length_from_any_config_key(config: dict[str, object], expected: int | None) -> None:
    assert context_length(config) == expected
    assert context_length(shipped_config("gpt2") or {}) == 1024
    assert context_length(shipped_config("TinyLlama/TinyLlama-1.1B-Chat-v1.0") or {}) == 2048
