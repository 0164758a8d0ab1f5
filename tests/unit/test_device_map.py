"""device_map: our balanced split, checks of explicit maps, and the split load/generate path (CPU).

No GPU is needed except for the last test: placement maps are built from module names (or the architecture
on the meta device), and the split path runs with accelerate's hooks on "GPUs" that are all the CPU, so the
hooks, tied weights and generate() run exactly as on a split model; only the transfers are no-ops.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from llem_mlflow.backends import hf as backend_module  # noqa: E402
from llem_mlflow.backends.catalogue import shipped_config  # noqa: E402
from llem_mlflow.backends.hf import TransformersBackend  # noqa: E402
from llem_mlflow.backends.hub import config_from_dict  # noqa: E402
from llem_mlflow.backends.placement import (  # noqa: E402
    balanced_device_map,
    decoder_layers,
    device_map_problems,
    gpu_index,
    input_device,
    layer_devices,
    meta_skeleton,
    plan_placement,
)
from llem_mlflow.backends.runtime import cuda_available  # noqa: E402
from llem_mlflow.backends.timing import StepTimer  # noqa: E402
from llem_mlflow.config import ExperimentConfig  # noqa: E402
from llem_mlflow.errors import BackendError, ConfigError  # noqa: E402
from llem_mlflow.run.execute import _default_backend  # noqa: E402
from tests.helpers_models import make_local_model  # noqa: E402

GPT2_NAMES = ["transformer", "transformer.wte", "transformer.wpe", "transformer.drop", "transformer.h"]
GPT2_NAMES += [f"transformer.h.{i}" for i in range(4)] + ["transformer.ln_f", "lm_head"]
LLAMA_NAMES = ["model", "model.embed_tokens", "model.layers", *[f"model.layers.{i}" for i in range(5)]]
LLAMA_NAMES += ["model.norm", "model.rotary_emb", "lm_head"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))


def skeleton(model: str, **overrides: Any) -> Any:
    config = shipped_config(model)
    assert config is not None
    return meta_skeleton(config_from_dict({**config, **overrides}), torch.float32)


def module_names(model: Any) -> list[str]:
    return [name for name, _ in model.named_modules()]


def tensor_names(model: Any) -> list[str]:
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    return names + [n for n, _ in model.named_buffers(remove_duplicate=False)]


def per_device(device_map: dict[str, int], prefix: str) -> list[int]:
    """How many ``prefix.<n>`` layers each device got."""
    devices = [
        d for name, d in device_map.items() if name.startswith(prefix) and name[len(prefix) :].isdigit()
    ]
    return [devices.count(d) for d in range(max(devices) + 1)]


# ---------------------------------------------------------------- the balanced map (pure)


def test_layers_split_in_contiguous_even_blocks() -> None:
    assert layer_devices(4, 2) == [0, 0, 1, 1]
    assert layer_devices(5, 2) == [0, 0, 0, 1, 1]
    assert layer_devices(22, 3) == [0] * 8 + [1] * 7 + [2] * 7
    assert layer_devices(2, 3) == [0, 1]
    assert decoder_layers(LLAMA_NAMES) == ("model.layers", [f"model.layers.{i}" for i in range(5)])


def test_balanced_gpt2_names_keep_a_tied_head_with_the_embeddings() -> None:
    assert balanced_device_map(GPT2_NAMES, 2, "lm_head", tied_head=True) == {
        "transformer.wte": 0,
        "transformer.wpe": 0,
        "transformer.drop": 0,
        "transformer.h.0": 0,
        "transformer.h.1": 0,
        "transformer.h.2": 1,
        "transformer.h.3": 1,
        "transformer.ln_f": 1,
        "lm_head": 0,
    }
    assert list(balanced_device_map(GPT2_NAMES, 2, "lm_head")) == [  # in the model's module order
        name for name in GPT2_NAMES if name not in ("transformer", "transformer.h")
    ]
    assert balanced_device_map(GPT2_NAMES, 3, "lm_head", tied_head=False)["lm_head"] == 2


def test_balanced_llama_names_put_norm_and_head_last_and_rotary_first() -> None:
    device_map = balanced_device_map(LLAMA_NAMES, 3, "lm_head", tied_head=False)
    assert [device_map[f"model.layers.{i}"] for i in range(5)] == [0, 0, 1, 1, 2]
    assert device_map["model.embed_tokens"] == device_map["model.rotary_emb"] == 0
    assert device_map["model.norm"] == device_map["lm_head"] == 2
    assert "model" not in device_map and "model.layers" not in device_map  # containers are not placed whole


def test_balanced_needs_a_layer_list() -> None:
    with pytest.raises(ConfigError, match="no list of decoder layers"):
        balanced_device_map(["encoder", "head"], 2)


@pytest.mark.parametrize(
    ("model", "n_devices", "layers_per_device", "head_device"),
    [
        ("gpt2", 2, [6, 6], 0),  # tied lm_head: with the embeddings
        ("gpt2", 3, [4, 4, 4], 0),
        ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 2, [11, 11], 1),
        ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 3, [8, 7, 7], 2),
        ("llem/tiny-gpt2", 2, [1, 1], 0),
    ],
)
def test_balanced_map_of_shipped_architectures_covers_everything_on_every_gpu(
    model: str, n_devices: int, layers_per_device: list[int], head_device: int
) -> None:
    arch = skeleton(model)
    placement = plan_placement(arch, "balanced", n_devices, torch.float32)
    device_map = placement.device_map
    prefix = "transformer.h." if "gpt2" in model else "model.layers."
    assert per_device(device_map, prefix) == layers_per_device
    assert set(device_map.values()) == set(range(n_devices))  # every GPU holds weights
    assert device_map["lm_head"] == head_device
    assert device_map_problems(device_map, module_names(arch), tensor_names(arch), n_devices) == []
    assert placement.weight_bytes == sum(p.numel() * 4 for p in arch.parameters())


def test_untied_gpt2_puts_its_head_on_the_last_gpu() -> None:
    arch = skeleton("llem/tiny-gpt2", tie_word_embeddings=False)
    assert plan_placement(arch, "balanced", 2, torch.float32).device_map["lm_head"] == 1


def _fake_gpu_memory(monkeypatch: pytest.MonkeyPatch, per_gpu_b: int) -> None:
    import accelerate.utils

    memory = {0: per_gpu_b, 1: per_gpu_b, "cpu": 10**12}
    monkeypatch.setattr(accelerate.utils, "get_max_memory", lambda max_memory=None: dict(memory))


@pytest.mark.parametrize("strategy", ["auto", "sequential"])
def test_accelerate_maps_use_both_gpus_when_one_is_too_small(
    monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    arch = skeleton("gpt2")
    weight_b = sum(p.numel() * 4 for p in arch.parameters())
    _fake_gpu_memory(monkeypatch, weight_b * 4 // 5)
    device_map = plan_placement(arch, strategy, 2, torch.float32).device_map
    assert set(device_map.values()) == {0, 1}
    assert device_map["lm_head"] == device_map["transformer.wte"]  # accelerate keeps tied weights together


def test_accelerate_map_that_would_offload_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    arch = skeleton("gpt2")
    _fake_gpu_memory(monkeypatch, sum(p.numel() * 4 for p in arch.parameters()) // 4)
    with pytest.raises(BackendError, match="does not fit in the free memory of 2 GPU"):
        plan_placement(arch, "sequential", 2, torch.float32)


# ---------------------------------------------------------------- explicit maps and requests


@pytest.mark.parametrize(
    ("device_map", "message"),
    [
        ({"model.layers.9": 0, "": 0}, "no module named model.layers.9"),
        ({"": 0, "lm_head": 2}, r"cuda:2 not visible \(torch sees 2 GPU"),
        (
            {"model.embed_tokens": 0, "model.layers": 1, "model.rotary_emb": 0},
            "no GPU for model.norm, lm_head",
        ),
    ],
)
def test_explicit_map_problems_are_named(device_map: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_placement(skeleton("llem/tiny-llama"), device_map, 2, torch.float32)


def test_explicit_map_may_not_split_tied_weights() -> None:
    device_map = {"transformer": 0, "lm_head": 1}
    with pytest.raises(ConfigError, match="tied weights lm_head.weight = transformer.wte.weight"):
        plan_placement(skeleton("llem/tiny-gpt2"), device_map, 2, torch.float32)


def test_a_valid_explicit_map_is_kept() -> None:
    device_map = {
        "model.embed_tokens": 0,
        "model.layers": 1,
        "model.rotary_emb": 0,
        "model.norm": 1,
        "lm_head": 0,
    }
    assert plan_placement(skeleton("llem/tiny-llama"), device_map, 2, torch.float32).device_map == device_map


@pytest.mark.parametrize("value", ["cpu", "disk", -1, True, "cuda", 1.0])
def test_map_values_must_be_gpus(value: object) -> None:
    with pytest.raises(ConfigError, match="is not a GPU"):
        TransformersBackend("llem/tiny-llama", device_map={"": value})  # type: ignore[dict-item]


def test_map_values_name_gpus_by_index_or_cuda_n() -> None:
    assert [gpu_index(v) for v in (0, 3, "2", "cuda:1", " cuda:0 ")] == [0, 3, 2, 1, 0]


@pytest.mark.parametrize(
    ("device_map", "message"), [("spread", "must be auto, balanced, sequential"), ({}, "empty")]
)
def test_unknown_strategy_and_empty_map_are_config_errors(device_map: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TransformersBackend("llem/tiny-llama", device_map=device_map)


def test_device_map_with_device_cpu_is_refused_at_once() -> None:
    with pytest.raises(ConfigError, match="cannot be used with device=cpu"):
        _default_backend(ExperimentConfig(model="llem/tiny-gpt2", device="cpu", device_map="balanced"))


def test_missing_accelerate_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    real = backend_module.importlib.util.find_spec
    monkeypatch.setattr(
        backend_module.importlib.util, "find_spec", lambda name: None if name == "accelerate" else real(name)
    )
    with pytest.raises(BackendError, match=r'pip install "accelerate>=1.0".*llem-mlflow\[multi-gpu\]'):
        TransformersBackend("llem/tiny-llama", device_map="balanced")
    TransformersBackend("llem/tiny-llama")  # without device_map accelerate is not needed


# ---------------------------------------------------------------- load() refuses before any weight loads


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building or loading any weights fails the test."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("weights were loaded before the device_map was checked")

    monkeypatch.setattr(backend_module, "_build_random", forbidden)
    monkeypatch.setattr(backend_module, "_load_pretrained", forbidden)


@pytest.mark.usefixtures("no_weights")
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_device_map_without_cuda_is_a_config_error(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    monkeypatch.setattr(backend_module, "cuda_available", lambda: False)
    backend = TransformersBackend("llem/tiny-gpt2", weights="random", device=device, device_map="balanced")
    with pytest.raises(ConfigError, match="torch sees none"):
        backend.load()


@pytest.mark.usefixtures("no_weights")
def test_a_wrong_explicit_map_fails_load_before_any_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_module, "cuda_available", lambda: True)
    monkeypatch.setattr(backend_module, "visible_gpus", lambda: [0, 1])
    backend = TransformersBackend(
        "llem/tiny-gpt2",
        weights="auto",
        precision="fp32",
        device_map={"transformer": 0, "lm_head": 1, "wte": 0},
    )
    with pytest.raises(ConfigError, match="no module named wte.*tied weights"):
        backend.load()


def test_cli_rejects_bad_json_with_one_line(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("llem-mlflow")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "llem_mlflow"]
    proc = subprocess.run(
        [*command, "run", "--model", "gpt2", "--device_map", '{"bad json'],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid config: device_map:"), proc.stderr
    assert "not valid JSON" in lines[0]


# ---------------------------------------------------------------- the split path, with the CPU as every GPU


@pytest.fixture
def cpu_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the device_map path with two "GPUs" that are both the CPU (the build device too)."""
    monkeypatch.setattr(backend_module, "cuda_available", lambda: True)
    monkeypatch.setattr(backend_module, "visible_gpus", lambda: ["cpu", "cpu"])
    monkeypatch.setattr(backend_module, "random_build_device", lambda weight_bytes: "cpu")


class _GenerateSpy:
    """Wraps ``model.generate``, keeping each call's output."""

    def __init__(self, model: Any) -> None:
        self.real = model.generate
        self.outputs: list[Any] = []

    def __call__(self, **kwargs: Any) -> Any:
        out = self.real(**kwargs)
        self.outputs.append(out)
        return out


def generated(backend: TransformersBackend) -> Any:
    spy = _GenerateSpy(backend.model)
    backend.model.generate = spy
    stats = backend.generate([[5, 6, 7, 8, 9], [10, 11], [12]], max_output_tokens=7)
    assert stats.new_tokens == 7 and stats.prefill_s is not None and len(stats.decode_step_s) == 6
    [out] = spy.outputs
    return out


@pytest.mark.usefixtures("cpu_gpus")
@pytest.mark.parametrize(
    ("model", "layer"), [("llem/tiny-gpt2", "transformer.h.1"), ("llem/tiny-llama", "model.layers.1")]
)
def test_split_random_model_generates_the_tokens_of_the_unsplit_one(model: str, layer: str) -> None:
    whole = TransformersBackend(model, weights="random", precision="fp32", device="cpu")
    whole_loaded = whole.load()
    split = TransformersBackend(
        model, weights="random", precision="fp32", device="cuda", device_map="balanced"
    )
    split_loaded = split.load()
    modules = dict(split.model.named_modules())
    assert hasattr(modules[layer], "_hf_hook") and hasattr(split.model, "_hf_hook")  # accelerate's hooks run
    assert split.model.hf_device_map[layer] == "cpu"
    head, embeddings = split.model.get_output_embeddings(), split.model.get_input_embeddings()
    assert (head.weight is embeddings.weight) == (model == "llem/tiny-gpt2")  # a tie survives dispatch
    for (name, a), b in zip(whole.model.state_dict().items(), split.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # same seed, same weights
    assert split_loaded.shape == whole_loaded.shape  # placement leaves the FLOPs shape alone
    assert any("built on the CPU" in w for w in split_loaded.warnings)
    assert torch.equal(generated(split), generated(whole))


@pytest.mark.usefixtures("cpu_gpus")
def test_split_pretrained_folder_loads_with_the_map(tmp_path: Path) -> None:
    folder = make_local_model(tmp_path / "m", "llem/tiny-llama", with_weights=True)
    whole = TransformersBackend(str(folder), weights="pretrained", precision="fp32", device="cpu")
    whole.load()
    split = TransformersBackend(str(folder), weights="pretrained", precision="fp32", device_map="balanced")
    loaded = split.load()
    assert loaded.weights == "pretrained" and not loaded.warnings
    assert torch.equal(generated(split), generated(whole))


# ---------------------------------------------------------------- step timing of a split model


class _EmbeddingsLast(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(2, 2)  # the first parameter, on the CPU
        self.embed = torch.nn.Embedding(4, 2, device="meta")  # the first stage, elsewhere

    def get_input_embeddings(self) -> Any:
        return self.embed


def test_inputs_go_to_the_input_embeddings_device() -> None:
    assert input_device(_EmbeddingsLast()) == torch.device("meta")


class _FakeStream:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def wait_stream(self, other: _FakeStream) -> None:
        self.log.append(f"{self.name} waits for {other.name}")


class _FakeEvent:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def record(self, stream: _FakeStream) -> None:
        self.log.append(f"record on {stream.name}")


class _Scores:
    def __init__(self, device: Any) -> None:
        self.device = device


def test_step_timer_waits_for_scores_from_another_gpu_before_marking(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    timer = StepTimer(torch.device("cuda", 0))
    timer._events = [_FakeEvent(calls) for _ in range(3)]
    timer._stream = _FakeStream(calls, "cuda:0")
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: _FakeStream(calls, str(device)))
    same, other = _Scores(torch.device("cuda", 0)), _Scores(torch.device("cuda", 1))
    assert timer(None, same) is same
    assert timer(None, other) is other
    assert calls == ["record on cuda:0", "cuda:0 waits for cuda:1", "record on cuda:0"]


# ---------------------------------------------------------------- two real GPUs


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_balanced_tiny_llama_spans_two_gpus_and_matches_one_gpu() -> None:
    one = TransformersBackend("llem/tiny-llama", weights="random", device="cuda")
    one.load()
    split = TransformersBackend("llem/tiny-llama", weights="random", device="cuda", device_map="balanced")
    loaded = split.load()
    assert [d.cuda_index for d in loaded.cuda_devices] == [0, 1]
    assert split.model.get_output_embeddings().weight.device.index == 1
    assert torch.equal(generated(split), generated(one))
