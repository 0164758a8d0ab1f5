"""The measurement hash is over resolved values, pinned by a literal, and recomputable from result.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.results.identity import HASH_RECIPE, ResolvedSettings, dataset_digest, resolve
from llem_mlflow.results.schema import ExperimentResult

CPU_RANDOM: dict[str, Any] = dict(
    weights="random", precision="fp32", device="cpu", revision=None, dataset="synthetic", tokenizer=None
)


def _hash(cfg: ExperimentConfig, **resolved: Any) -> str:
    return resolve(cfg, **{**CPU_RANDOM, **resolved}).measurement_hash()


def test_recipe_is_pinned_by_a_literal_hash() -> None:
    # If this fails, the hash recipe changed: bump HASH_RECIPE and update README and this literal.
    assert HASH_RECIPE == 7
    assert _hash(ExperimentConfig()) == "a2ed655bdfcb259b"
    assert _hash(ExperimentConfig(), attention="sdpa") == "f4ce241ea776bc3c"  # what a default run resolves
    assert _hash(ExperimentConfig(min_window_s=20)) == "f62131b400a7fab9"  # recipe 6 on hash min_window_s
    # recipe 7 hashes the power settle warm-up: its threshold, and its cap where there is a settle to cap
    assert _hash(ExperimentConfig(warmup_power_settle_pct=0.5)) == "30f3d4b7cb4cbe06"
    assert _hash(ExperimentConfig(warmup_power_settle_pct=0.5, warmup_power_max_s=120)) == "8ae3018ff2cf76f4"


def test_older_recipes_keep_their_hash() -> None:
    # Recipe 2 (before cycles existed) must hash exactly as when its results were written.
    recipe_2 = resolve(ExperimentConfig(), **CPU_RANDOM).model_copy(update={"recipe": 2})
    assert recipe_2.measurement_hash() == "1282dc0b043a5956"
    recipe_3 = resolve(ExperimentConfig(), **CPU_RANDOM).model_copy(update={"recipe": 3})
    assert recipe_3.measurement_hash() == "ce2fdafde6e58290"
    recipe_4 = resolve(ExperimentConfig(), **CPU_RANDOM).model_copy(update={"recipe": 4})
    assert recipe_4.measurement_hash() == "84e74c9d2c43b5b8"
    recipe_5 = resolve(ExperimentConfig(), **CPU_RANDOM).model_copy(update={"recipe": 5})
    assert recipe_5.measurement_hash() == "2a7cd6a1631116d3"
    assert recipe_5.model_copy(update={"min_window_s": 20.0}).measurement_hash() == "2a7cd6a1631116d3"
    recipe_6 = resolve(ExperimentConfig(), **CPU_RANDOM).model_copy(update={"recipe": 6})
    assert recipe_6.measurement_hash() == "f8bd28f6400b2107"  # recipe 6's own pins, as written then
    assert recipe_6.model_copy(update={"attention": "sdpa"}).measurement_hash() == "de68afdbe1436ade"
    assert recipe_6.model_copy(update={"min_window_s": 20.0}).measurement_hash() == "383ca60f011e626e"
    power = {"warmup_power_settle_pct": 0.5, "warmup_power_max_s": 60.0}  # not in recipe 6
    assert recipe_6.model_copy(update=power).measurement_hash() == "f8bd28f6400b2107"
    assert _hash(ExperimentConfig(cycles=5)) != _hash(ExperimentConfig())
    assert _hash(ExperimentConfig(cooldown_s=2)) != _hash(ExperimentConfig())


def test_auto_and_its_resolution_give_the_same_hash() -> None:
    requested_auto = ExperimentConfig(device="auto", precision="auto", weights="auto")
    requested_exact = ExperimentConfig(device="cpu", precision="fp32", weights="random")
    assert _hash(requested_auto) == _hash(requested_exact)


def test_different_measurements_never_share_a_hash() -> None:
    cfg = ExperimentConfig()
    gpu_pretrained = _hash(cfg, weights="pretrained", precision="bf16", device="cuda", revision="abc")
    assert _hash(cfg) != gpu_pretrained
    assert _hash(cfg, precision="bf16") != _hash(cfg)
    assert _hash(cfg, device="cuda") != _hash(cfg)
    assert _hash(cfg, weights="pretrained", revision="a") != _hash(cfg, weights="pretrained", revision="b")


def test_output_and_tracking_fields_do_not_change_the_hash() -> None:
    moved = ExperimentConfig(
        output_dir="elsewhere", tracking_uri="http://x", experiment_name="e", run_name="r"
    )
    assert _hash(moved) == _hash(ExperimentConfig())


def test_dataset_hashes_by_content_not_path(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    a.write_text('{"prompt": "hi"}\n')
    b.write_text('{"prompt": "hi"}\n')
    c.write_text('{"prompt": "ho"}\n')
    cfg = ExperimentConfig(dataset=str(a))
    text = dict(tokenizer="byte-level fallback (UTF-8 bytes as ids)")
    assert dataset_digest(a) == dataset_digest(b) != dataset_digest(c)
    same = _hash(cfg, dataset=dataset_digest(a), **text)
    assert same == _hash(ExperimentConfig(dataset=str(b)), dataset=dataset_digest(b), **text)
    assert same != _hash(cfg, dataset=dataset_digest(c), **text)
    assert same != _hash(cfg, dataset=dataset_digest(a), tokenizer="gpt2 (HF cache)")
    from_hub = _hash(cfg, dataset=dataset_digest(a), tokenizer="gpt2 (hub)")
    assert from_hub == _hash(cfg, dataset=dataset_digest(a), tokenizer="gpt2 (HF cache)")  # same tokenizer
    assert same != _hash(
        ExperimentConfig(dataset=str(a), prompt_field="text"), dataset=dataset_digest(a), **text
    )


def test_synthetic_runs_ignore_tokenizer_and_prompt_field() -> None:
    assert _hash(ExperimentConfig(prompt_field="text")) == _hash(ExperimentConfig())
    assert resolve(ExperimentConfig(), **{**CPU_RANDOM, "tokenizer": "x"}).tokenizer is None


def test_hash_is_recomputable_from_result_json(sample_result: tuple[ExperimentResult, Any]) -> None:
    result, _ = sample_result
    data = json.loads(result.model_dump_json())
    canonical = json.dumps(data["resolved"], sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(canonical.encode()).hexdigest()[:16] == data["measurement_config_hash"]
    assert data["config"]["precision"] == "bf16" and data["resolved"]["weights"] == "pretrained"


def test_result_refuses_a_hash_that_is_not_of_its_resolved_settings(
    sample_result: tuple[ExperimentResult, Any],
) -> None:
    result, _ = sample_result
    data = json.loads(result.model_dump_json())
    data["measurement_config_hash"] = "0" * 16
    try:
        ExperimentResult.model_validate(data)
    except ValueError as exc:
        assert "hash of `resolved`" in str(exc)
    else:
        raise AssertionError("a mismatched hash was accepted")


def test_resolved_settings_accept_no_auto() -> None:
    fields = {**CPU_RANDOM, "device": "auto"}
    try:
        resolve(ExperimentConfig(), **fields)
    except ValueError as exc:
        assert "device" in str(exc)
    else:
        raise AssertionError("device=auto was accepted as a resolved value")
    assert set(ResolvedSettings.model_fields) >= {"model_revision", "backend_options", "tokenizer", "dataset"}


def test_every_config_field_is_hashed_or_declared_as_where_results_go() -> None:
    # A new config field must either enter ResolvedSettings (and bump HASH_RECIPE) or be listed here.
    where_results_go = {"output_dir", "tracking_uri", "experiment_name", "run_name", "mlflow"}
    where_results_go |= {"carbon_intensity_g_per_kwh", "pue", "gain_uncertainty_pct"}  # derived, not measured
    # a permission, not a setting: a model needing remote code loads only with it, others ignore it
    where_results_go |= {"trust_remote_code"}
    # how power is observed (buffer or poll), not what is measured: the energy comes from the counter
    where_results_go |= {"power_sampling"}
    # a drift check after the cycles, seen by the trace only: the cycles are measured the same either way
    where_results_go |= {"idle_after_s"}
    # the server scenario: what decides the measurement is hashed inside backend_options (run.serve's
    # server_options: scenario, engine, command template, load, api, timeout); where the server is, how
    # long it may take to start and which GPUs are read are not
    where_results_go |= {
        "scenario",
        "server_command",
        "concurrency",
        "request_rate",
        "api",
        "request_timeout_s",
    }
    where_results_go |= {"server_url", "server_gpus", "server_start_timeout_s"}
    # a figure taken after the measured windows, beside them: it changes nothing they measure
    where_results_go |= {"quality"}
    hashed = set(ResolvedSettings.model_fields)
    assert set(ExperimentConfig.model_fields) - where_results_go <= hashed


def test_recipe_4_names_methodology_prefill_settle_and_gpu_split() -> None:
    base = _hash(ExperimentConfig())
    assert _hash(ExperimentConfig(measurement_methodology="steady_state")) != base
    assert _hash(ExperimentConfig(isolated_prefill=True)) != base
    assert _hash(ExperimentConfig(idle_settle_max_s=30)) != base
    cuda = dict(device="cuda", precision="bf16")
    assert _hash(ExperimentConfig(device_map="auto"), **cuda, gpus=2) != _hash(
        ExperimentConfig(), **cuda, gpus=1
    )
    assert _hash(ExperimentConfig(), **cuda, gpus=2) != _hash(ExperimentConfig(), **cuda, gpus=1)
    assert _hash(ExperimentConfig(), gpus=3) == base  # no GPU counted on CPU


def test_recipe_5_names_cache_compile_and_the_attention_the_model_uses() -> None:
    base = _hash(ExperimentConfig(), attention="sdpa")
    static = ExperimentConfig(cache="static")
    assert _hash(static, attention="sdpa") != base
    assert _hash(ExperimentConfig(cache="static", compile="reduce-overhead"), attention="sdpa") != _hash(
        static, attention="sdpa"
    )
    assert _hash(ExperimentConfig(), attention="eager") != base
    assert _hash(ExperimentConfig(attention="sdpa"), attention="sdpa") == base  # auto resolved to sdpa
    assert resolve(ExperimentConfig(attention="eager"), **CPU_RANDOM).attention == "eager"  # as asked


def test_recipe_7_names_the_power_settle_and_its_cap_only_where_it_runs() -> None:
    base = _hash(ExperimentConfig())
    settle = ExperimentConfig(warmup_power_settle_pct=0.5)
    assert _hash(settle) != base
    assert _hash(ExperimentConfig(warmup_power_settle_pct=1.0)) != _hash(settle)
    assert _hash(settle.model_copy(update={"warmup_power_max_s": 120.0})) != _hash(settle)
    assert _hash(ExperimentConfig(warmup_power_max_s=120)) == base  # no settle: the cap changes nothing
    resolved = resolve(ExperimentConfig(warmup_power_max_s=120), **CPU_RANDOM)
    assert resolved.warmup_power_settle_pct is None and resolved.warmup_power_max_s is None
    assert resolve(settle, **CPU_RANDOM).warmup_power_max_s == 60.0
