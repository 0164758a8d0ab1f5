"""compile: graph: our decode loop gives eager generate()'s tokens; capture once per bucket; refusals (CPU).

The CUDA capture itself cannot run here: ``FakeGraphs`` stands in for ``decode_loop.CudaGraphs`` (it
runs the warm-up steps as the real one does, which leaves the state dirty, and replays by calling the
step), so these tests check what the loop does around a capture: once per batch size, a replay per
decode step, a clean state after it, and timings that leave the capture out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from llem_mlflow.backends import decode_loop, fastpath, generation  # noqa: E402
from llem_mlflow.backends.catalogue import shipped_config  # noqa: E402
from llem_mlflow.backends.decode_loop import DecodeLoop, LoopCall  # noqa: E402
from llem_mlflow.backends.fastpath import FastPath  # noqa: E402
from llem_mlflow.backends.hf import TransformersBackend  # noqa: E402
from llem_mlflow.backends.hub import config_from_dict  # noqa: E402
from llem_mlflow.backends.timing import StepTimer  # noqa: E402
from llem_mlflow.config import ExperimentConfig, load_config  # noqa: E402
from llem_mlflow.errors import ConfigError  # noqa: E402

MODELS = ["llem/tiny-gpt2", "llem/tiny-llama"]
PAD = 0
NEW_TOKENS = 7
#: Batch 1, and batch 3 with three prompt lengths (rows 1 and 2 left-padded).
BATCHES = {
    1: [[5, 17, 300, 42, 9]],
    3: [[5, 17, 300, 42, 9, 77], [11, 12], [13, 14, 15, 16, 817, 18, 19, 20, 400]],
}
MAX_INPUT = 9
INIT_RANGE = 0.3
GRAPH = FastPath(cache="static", compile="graph", max_cache_len=MAX_INPUT + NEW_TOKENS)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


class FakeGraphs:
    """``CudaGraphs`` without CUDA: warm-up steps run (dirtying the state), replays call the step."""

    def __init__(self, warmup_steps: int = 2) -> None:
        self.warmup_steps = warmup_steps
        self.captures = 0
        self.replays = 0

    def capture(self, step: Callable[[], None]) -> Callable[[], None]:
        self.captures += 1
        for _ in range(self.warmup_steps):
            step()

        def replay() -> None:
            self.replays += 1
            step()

        return replay


class CountingTimer(StepTimer):
    """A CPU ``StepTimer`` that also counts its ``start()`` calls."""

    def __init__(self) -> None:
        super().__init__(torch.device("cpu"))
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        super().start()


def build(name: str, seed: int = 0) -> Any:
    """Seeded random weights from the shipped config, CPU, fp32, as the backend builds them.

    With a wider init (0.3, not 0.02) than the shipped config's, so logits are peaked enough that a wrong
    position, mask or cache slot changes the greedy tokens (at 0.02 a frozen llama position does not).
    """
    from transformers import AutoModelForCausalLM

    config = shipped_config(name) or {}
    config["initializer_range"] = INIT_RANGE
    auto_model: Any = AutoModelForCausalLM
    torch.manual_seed(seed)
    return auto_model.from_config(config_from_dict(config)).eval()


def tokens(model: Any, batch: list[list[int]], fast: FastPath, new_tokens: int = NEW_TOKENS) -> Any:
    """The ids (prompt, then new tokens) the backend's call for ``fast`` produces, timer started first."""
    timer = StepTimer(torch.device("cpu"))
    call = generation.prepare(model, batch, PAD, new_tokens, fast, timer)
    with torch.inference_mode():
        timer.start()
        return call.generate()


def loop_call(model: Any, rows: int, new_tokens: int = NEW_TOKENS, eos: list[int] | None = None) -> LoopCall:
    ids, mask = (torch.tensor(t) for t in _left_pad(BATCHES[rows]))
    eos_ids = torch.tensor(eos) if eos else None
    return LoopCall(ids, mask, new_tokens, MAX_INPUT + new_tokens, eos_ids, rows > 1)


def _left_pad(batch: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    from llem_mlflow.backends.tokens import left_pad

    return left_pad(batch, PAD)


def run_loop(loop: DecodeLoop, model: Any, call: LoopCall, timer: StepTimer | None = None) -> Any:
    timer = timer or StepTimer(torch.device("cpu"))
    with torch.inference_mode():
        timer.start()
        return loop.run(model, call, timer)


# -- tokens: the same as eager generate() (dynamic cache), batch 1 and a left-padded batch 3


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_graph_mode_gives_eager_generates_tokens(name: str, rows: int) -> None:
    model = build(name)
    reference = tokens(model, BATCHES[rows], FastPath())  # eager generate(), dynamic cache
    out = tokens(model, BATCHES[rows], GRAPH)
    assert out.shape == (rows, max(map(len, BATCHES[rows])) + NEW_TOKENS)
    assert torch.equal(out, reference)
    assert rows in decode_loop.loop_for(model, None).buckets  # our loop ran it, not generate()


@pytest.mark.parametrize("name", MODELS)
def test_eos_is_never_chosen_as_generate_never_chooses_it(name: str) -> None:
    """EOS = a token greedy decoding picks when EOS is allowed: both paths must pick the runner-up."""
    model = build(name)
    free = run_loop(DecodeLoop(), model, loop_call(model, 3))  # no EOS ids: nothing masked
    eos_id = int(free[0, -3])  # chosen at a decode step of row 0
    model.generation_config.eos_token_id = eos_id
    reference = tokens(model, BATCHES[3], FastPath())
    out = tokens(model, BATCHES[3], GRAPH)
    assert torch.equal(out, reference)
    assert not torch.equal(out, free)  # masking EOS changed the tokens: the check above had teeth
    assert eos_id not in out[:, -NEW_TOKENS:].tolist()[0]


# -- capture: once per batch-size bucket, a replay per decode step, state clean after it


@pytest.mark.parametrize("name", MODELS)
def test_capture_once_per_bucket_and_a_replay_per_step(name: str) -> None:
    model = build(name)
    plain = {rows: run_loop(DecodeLoop(), model, loop_call(model, rows)) for rows in BATCHES}
    graphs = FakeGraphs()
    loop = DecodeLoop(graphs)
    for rows in (3, 1, 3, 3, 1):
        assert torch.equal(run_loop(loop, model, loop_call(model, rows)), plain[rows])
    assert graphs.captures == 2 and sorted(loop.buckets) == [1, 3]
    assert all(bucket.captures == 1 for bucket in loop.buckets.values())
    assert graphs.replays == 5 * (NEW_TOKENS - 1)  # the prefill is never replayed


def test_one_new_token_is_a_prefill_alone_and_captures_nothing() -> None:
    model = build("llem/tiny-llama")
    graphs = FakeGraphs()
    loop = DecodeLoop(graphs)
    out = run_loop(loop, model, loop_call(model, 3, new_tokens=1))
    assert torch.equal(out, run_loop(DecodeLoop(), model, loop_call(model, 3, new_tokens=1)))
    assert (graphs.captures, graphs.replays) == (0, 0)


def test_the_capture_is_left_out_of_the_step_timings() -> None:
    model = build("llem/tiny-gpt2")
    loop = DecodeLoop(FakeGraphs())
    for expected_starts in (2, 1):  # the capturing call restarts its timer after the capture; later don't
        timer = CountingTimer()
        run_loop(loop, model, loop_call(model, 3), timer)
        assert timer.starts == expected_starts
        assert timer.marks == NEW_TOKENS + 1  # start, the prefill, every decode step


def test_a_longer_call_remakes_its_bucket_with_a_longer_cache() -> None:
    model = build("llem/tiny-llama")
    graphs = FakeGraphs()
    loop = DecodeLoop(graphs)
    run_loop(loop, model, loop_call(model, 1))
    longer = dataclasses.replace(loop_call(model, 1, new_tokens=12), cache_len=MAX_INPUT + 12)
    out = run_loop(loop, model, longer)
    assert torch.equal(out, run_loop(DecodeLoop(), model, longer))
    assert graphs.captures == 2 and loop.buckets[1].state.cache_len == MAX_INPUT + 12


def test_eos_ids_are_written_in_place_where_a_captured_step_reads_them() -> None:
    """A CUDA graph reads its inputs by address: each call's new EOS tensor is copied into the bucket's."""
    model = build("llem/tiny-llama")
    graphs = FakeGraphs()
    loop = DecodeLoop(graphs)
    run_loop(loop, model, loop_call(model, 3, eos=[2]))
    kept = loop.buckets[3].state.eos
    run_loop(loop, model, loop_call(model, 3, eos=[7]))  # a new tensor, same count: copied in place
    assert loop.buckets[3].state.eos is kept and kept.tolist() == [7] and graphs.captures == 1
    out = run_loop(loop, model, loop_call(model, 3, eos=[7, 9]))  # another count: a new buffer, recaptured
    assert graphs.captures == 2 and loop.buckets[3].state.eos is not kept
    assert torch.equal(out, run_loop(DecodeLoop(), model, loop_call(model, 3, eos=[7, 9])))


def test_the_loop_lives_on_the_model_outside_its_state_dict() -> None:
    model = build("llem/tiny-gpt2")
    keys = set(model.state_dict())
    loop = decode_loop.loop_for(model, None)
    assert decode_loop.loop_for(model, FakeGraphs()) is loop
    assert set(model.state_dict()) == keys and decode_loop.loop_for(build("llem/tiny-gpt2"), None) is not loop


# -- the backend: BatchStats as eager generate() gives them


@pytest.mark.parametrize("name", MODELS)
def test_backend_batch_stats_match_the_eager_path(name: str) -> None:
    batch = BATCHES[3]
    stats = {}
    for compile_mode, cache in (("off", "dynamic"), ("graph", "static")):
        fast = FastPath(cache, compile_mode, "auto", MAX_INPUT + NEW_TOKENS)
        backend = TransformersBackend(name, weights="random", device="cpu", seed=3, fast=fast)
        backend.load()
        stats[compile_mode] = backend.generate(batch, NEW_TOKENS)
    graph = stats["graph"]
    assert graph.prefill_s is not None and graph.prefill_s > 0
    assert len(graph.decode_step_s) == NEW_TOKENS - 1 and all(s > 0 for s in graph.decode_step_s)
    untimed = {k: dataclasses.replace(s, prefill_s=None, decode_step_s=()) for k, s in stats.items()}
    assert untimed["graph"] == untimed["off"]
    assert (graph.new_tokens, graph.batch_size, graph.padded_input_len) == (NEW_TOKENS, 3, MAX_INPUT)
    assert graph.input_lens == (6, 2, 9) and graph.output_tokens == 3 * NEW_TOKENS


# -- config and refusals


def test_graph_is_a_compile_value_that_needs_a_static_cache() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(compile="graph")
    assert "compile: graph needs cache: static" in str(caught.value)
    cfg = load_config(compile="graph", cache="static")
    fast = FastPath.of(cfg)
    assert (fast.graph, fast.compiled, fast.per_batch_size) == (True, False, True)
    assert ExperimentConfig().compile == "off"  # off by default


def test_graph_mode_warms_up_each_batch_size_and_keeps_generate_eager() -> None:
    groups = [[[1], [2], [3]], [[4], [5], [6]], [[7], [8]]]
    assert fastpath.warmup_groups(GRAPH, groups) == [groups[0], groups[2]]
    fields = fastpath.generate_kwargs(GRAPH)
    assert fields["disable_compile"] is True and "compile_config" not in fields


def test_prepare_checks_the_model_and_warns_on_cpu() -> None:
    model = build("llem/tiny-llama")
    warnings = fastpath.prepare(model, GRAPH)
    assert len(warnings) == 1 and "uncaptured" in warnings[0]


def test_a_model_split_over_devices_is_refused_with_what_to_do() -> None:
    model = build("llem/tiny-llama")
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers": 1, "lm_head": 1}
    with pytest.raises(ConfigError) as caught:
        fastpath.prepare(model, GRAPH)
    text = str(caught.value)
    assert "split over 2 devices" in text and "remove device_map" in text and "reduce-overhead" in text


def test_a_model_without_transformers_cache_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("llem/tiny-gpt2")
    monkeypatch.setattr(type(model), "_supports_default_dynamic_cache", classmethod(lambda cls: False))
    with pytest.raises(ConfigError, match="keeps its own"):
        fastpath.prepare(model, GRAPH)


def test_a_forward_without_a_cache_keyword_is_refused() -> None:
    class NoCache(torch.nn.Module):
        config = build("llem/tiny-gpt2").config

        def forward(self, input_ids: Any) -> Any:
            return input_ids

    with pytest.raises(ConfigError, match="neither cache nor past_key_values"):
        decode_loop.check_supported(NoCache())


def test_sliding_window_layers_are_refused() -> None:
    from transformers import AutoModelForCausalLM, MistralConfig

    config = MistralConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=4,
    )
    auto_model: Any = AutoModelForCausalLM
    with pytest.raises(ConfigError, match="full-attention static caches only"):
        decode_loop.check_supported(auto_model.from_config(config))


def test_a_whole_run_with_compile_graph_records_it_in_its_resolved_settings(tmp_path: Path) -> None:
    from llem_mlflow.config import ExperimentConfig
    from llem_mlflow.run.execute import run_experiment

    cfg = ExperimentConfig(
        model="llem/tiny-gpt2", weights="random", device="cpu", n=4, batch_size=2, max_output_tokens=3,
        cache="static", compile="graph", mlflow=False, output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    result = run_experiment(cfg)
    assert result.status == "completed" and result.output_tokens == 4 * 3
    assert result.resolved is not None and result.resolved.compile == "graph"
