"""The memory roof: peak memory bandwidth by GPU name, bytes moved per phase, bandwidth utilization in the
result, in MLflow and in the CLI summary; results written before it still load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import build_result

from llem_mlflow.cli import summary as cli
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.figures import flops, peaks, roofline
from llem_mlflow.figures.peaks import GPUS, peak_memory_bandwidth
from llem_mlflow.measure import rapl
from llem_mlflow.protocols import BatchStats, CudaDeviceId, ModelShape
from llem_mlflow.results import files as artifacts
from llem_mlflow.results import naming
from llem_mlflow.results.schema import ComputeFigures
from llem_mlflow.run.execute import GpuSet, execute
from tests.fakes import FAKE_DECODE_STEP_S, FakeBackend, FakeDevice

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)
TB, GB = 1e12, 1e9

# ---------------------------------------------------------------- peak memory bandwidth


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H200", 4.8 * TB),
        ("NVIDIA H200 NVL", 4.8 * TB),
        ("NVIDIA H100 80GB HBM3", 3.35 * TB),
        ("NVIDIA H100 PCIe", 2.0 * TB),
        ("NVIDIA H100 NVL", 3.9 * TB),
        ("NVIDIA A100-SXM4-80GB", 2039 * GB),
        ("NVIDIA A100-SXM4-40GB", 1555 * GB),
        ("NVIDIA A100 80GB PCIe", 1935 * GB),
        ("NVIDIA A100-PCIE-40GB", 1555 * GB),
        ("NVIDIA L40S", 864 * GB),
        ("NVIDIA L4", 300 * GB),
        ("NVIDIA A10", 600 * GB),
        ("NVIDIA GeForce RTX 4090", 1008 * GB),
    ],
)
def test_peak_memory_bandwidth_of_every_entry(name: str, expected: float) -> None:
    assert peak_memory_bandwidth(name) == expected


def test_the_bandwidth_table_covers_every_entry_once() -> None:
    labels = {gpu.label: peak_memory_bandwidth(gpu.aliases[0]) for gpu in GPUS}
    assert len(labels) == len(GPUS) == 13
    for gpu in GPUS:
        assert 100 * GB < gpu.memory_bytes_per_s < 10 * TB, gpu.label
        for alias in gpu.aliases:
            assert peak_memory_bandwidth(f"NVIDIA {alias.upper()}") == gpu.memory_bytes_per_s, alias


@pytest.mark.parametrize(
    "name",
    [
        "",
        "cpu",
        "Tesla T4",
        "NVIDIA A10G",
        "NVIDIA L40",
        "NVIDIA GH200 480GB",
        "NVIDIA H100",  # form factor unknown: 2.0, 3.35 or 3.9 TB/s
        "NVIDIA A100",
        "NVIDIA GeForce RTX 4090 D",
        "NVIDIA H100 80GB HBM3 MIG 1g.10gb",  # a slice has a fraction of the board's bandwidth
        "AMD Instinct MI300X",
    ],
)
def test_unknown_gpus_have_no_bandwidth(name: str) -> None:
    assert peak_memory_bandwidth(name) is None


# ---------------------------------------------------------------- bytes moved

#: 2 layers, attention width 8, 100 body + 40 head matmul weights.
TINY = ModelShape(body_matmul_params=100, lm_head_params=40, n_layers=2, attn_dim=8, vocab_size=10)
#: batch 2, prompts padded to 5, 4 new tokens: 3 decode steps.
BATCH = BatchStats(input_tokens=9, output_tokens=8, padded_input_len=5, new_tokens=4, batch_size=2)


def test_bytes_of_a_tiny_shape_by_hand() -> None:
    # bf16, 2 bytes: weights W = (100 + 40) x 2 = 280; K and V of one position: 2 x 2 layers x 8 x 2 = 64.
    # prefill: W + 2 rows x 5 positions x 64 = 280 + 640 = 920
    # decode steps t = 1, 2, 3 attend 6, 7, 8 positions: 3 x W + 2 rows x 64 x (6 + 7 + 8) = 840 + 2688 = 3528
    moved = roofline.estimate_phase_bytes(TINY, [BATCH], 2)
    assert (moved.prefill, moved.decode, moved.total) == (920.0, 3528.0, 4448.0)
    # grouped-query K/V of width 4: 64 -> 32 per position: 280 + 320 = 600 and 840 + 1344 = 2184
    grouped = roofline.estimate_phase_bytes(TINY, [BATCH], 2, kv_dim=4)
    assert (grouped.prefill, grouped.decode) == (600.0, 2184.0)
    # fp32 doubles everything; two batches add up
    assert roofline.estimate_phase_bytes(TINY, [BATCH, BATCH], 4).total == 4 * 4448.0


def test_one_new_token_is_prefill_only_and_none_is_nothing() -> None:
    one = BatchStats(input_tokens=9, output_tokens=2, padded_input_len=5, new_tokens=1, batch_size=2)
    none = BatchStats(input_tokens=9, output_tokens=0, padded_input_len=5, new_tokens=0, batch_size=2)
    assert roofline.estimate_phase_bytes(TINY, [one], 2) == roofline.PhaseBytes(prefill=920.0, decode=0.0)
    assert roofline.estimate_phase_bytes(TINY, [none], 2).total == 0.0
    with pytest.raises(ValueError, match="positive"):
        roofline.estimate_phase_bytes(TINY, [BATCH], 0)


@pytest.mark.parametrize(
    ("precision", "size"),
    [
        ("fp32", 4),
        ("float32", 4),
        ("tf32", 4),
        ("fp16", 2),
        ("BF16", 2),
        ("torch.bfloat16", 2),
        ("fp8", None),
    ],
)
def test_element_bytes(precision: str, size: int | None) -> None:
    assert roofline.element_bytes(precision) == size


def test_bandwidth_util_arithmetic_and_nulls() -> None:
    assert roofline.bandwidth_util(2.4e12, 1.0, 4.8e12) == 0.5
    assert roofline.bandwidth_util(4.8e12, 1.0, 4.8e12, gpus=2) == 0.5
    assert roofline.bandwidth_util(1.0, 1.0, None) is None
    assert roofline.bandwidth_util(1.0, 0.0, 4.8e12) is None
    assert roofline.bandwidth_util(1.0, float("nan"), 4.8e12) is None
    with pytest.raises(ValueError, match="gpus"):
        roofline.bandwidth_util(1.0, 1.0, 4.8e12, gpus=0)


def test_decode_util_counts_only_batches_with_every_step_timed() -> None:
    timed = BatchStats(**{**vars(BATCH), "prefill_s": 0.01, "decode_step_s": (0.001, 0.001, 0.002)})
    partly = BatchStats(**{**vars(BATCH), "prefill_s": 0.01, "decode_step_s": (0.001,)})  # 1 of 3 steps
    untimed = BATCH
    util = roofline.decode_bandwidth_util(TINY, [timed, partly, untimed], 2, peak_bytes_per_s=1e6)
    assert util == pytest.approx(3528.0 / 0.004 / 1e6)  # the timed batch's decode bytes over its 4 ms
    assert roofline.decode_bandwidth_util(TINY, [untimed, partly], 2, 1e6) is None
    assert roofline.decode_bandwidth_util(TINY, [timed], 2, None) is None


# ---------------------------------------------------------------- in a run


class _Recording(FakeBackend):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.stats: list[BatchStats] = []

    def generate(self, batch: list[list[int]], max_output_tokens: int) -> BatchStats:
        stats = super().generate(batch, max_output_tokens)
        self.stats.append(stats)
        return stats


def _cfg(tmp_path: Path) -> ExperimentConfig:
    base = dict(n=4, batch_size=2, max_input_tokens=6, max_output_tokens=4, output_dir=str(tmp_path / "o"),
                mlflow=False, baseline_s=0.0, sampling_interval_s=0.005, warmup_batches=0)  # fmt: skip
    return ExperimentConfig.model_validate(base)


def test_a_run_on_an_h200_reports_decode_bandwidth_utilization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", tmp_path / "absent")
    device = FakeDevice(name="NVIDIA H200", energy_script=[0.0, 100.0], power_w=300.0)
    backend = _Recording(device="cuda", cuda_devices=[CUDA0])
    r = execute(
        _cfg(tmp_path), backend=backend, gpus=lambda ids: GpuSet([device], "580"), store_probe=lambda c: None
    ).result
    # 2 measured batches of 2 rows, every prompt 6 tokens, 4 new tokens (3 decode steps), fp32 (4 bytes).
    assert [(s.batch_size, s.padded_input_len, s.new_tokens) for s in backend.stats] == [(2, 6, 4)] * 2
    # per batch: W = (1,000,000 + 64,000) x 4 = 4,256,000; K+V per position = 2 x 2 x 64 x 4 = 1,024;
    # decode = 3 x W + 2 rows x 1,024 x (7 + 8 + 9) = 12,768,000 + 49,152 = 12,817,152
    decode_bytes = 2 * 12_817_152
    decode_s = 2 * 3 * FAKE_DECODE_STEP_S
    c = r.compute
    assert c is not None and c.decode_bytes == decode_bytes
    assert c.prefill_bytes == 2 * (4_256_000 + 2 * 6 * 1_024)
    assert c.peak_memory_bytes_per_s == 4.8e12 and c.bytes_method == roofline.BYTES_METHOD
    assert c.memory_bandwidth_util == pytest.approx(decode_bytes / (decode_s * 4.8e12))
    metrics = naming.metrics(r)
    assert metrics["compute/decode_bytes"] == decode_bytes
    assert metrics["compute/memory_bandwidth_util"] == float(f"{c.memory_bandwidth_util:.6g}")


def test_a_cpu_run_has_bytes_but_no_utilization(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", tmp_path / "absent")
    r = execute(_cfg(tmp_path), backend=FakeBackend(), store_probe=lambda c: None).result
    c = r.compute
    assert c is not None and c.decode_bytes == 2 * 12_817_152
    assert c.peak_memory_bytes_per_s is None and c.memory_bandwidth_util is None
    assert "compute/memory_bandwidth_util" not in naming.metrics(r)


# ---------------------------------------------------------------- results, MLflow names, CLI


@pytest.mark.parametrize("name", ["h200_tinyllama_steady", "h200x2_tinyllama_split", "h200_gpt2_sigint"])
def test_results_written_before_the_memory_roof_still_load(name: str) -> None:
    real = artifacts.read_result_json(FIXTURES / name / "result.json")
    assert real.compute is not None and real.compute.mfu is not None
    assert real.compute.decode_bytes is None and real.compute.memory_bandwidth_util is None
    assert "compute/memory_bandwidth_util" not in naming.metrics(real)


def test_replay_of_the_h200_gpt2_batch_8_run() -> None:
    """The bs8 fixture has no step timings: its bytes over its whole measured window, against the H200."""
    raw = json.loads((FIXTURES / "h200_gpt2_bs8" / "result.json").read_text())
    cfg = raw["config"]
    # gpt2: 12 layers of 4 x 768^2 (attention) + 2 x 768 x 3072 (MLP); LM head 50257 x 768 (tied)
    gpt2 = ModelShape(
        body_matmul_params=12 * (4 * 768 * 768 + 2 * 768 * 3072),
        lm_head_params=50257 * 768,
        n_layers=12,
        attn_dim=768,
        vocab_size=50257,
    )
    rows, length, new = cfg["batch_size"], cfg["max_input_tokens"], cfg["max_output_tokens"]
    batch = BatchStats(rows * length, rows * new, padded_input_len=length, new_tokens=new, batch_size=rows)
    batches = [batch] * (cfg["n"] // rows)
    assert flops.estimate_generation_flops(gpt2, batches) == raw["total_flops"]  # the same workload
    moved = roofline.estimate_phase_bytes(gpt2, batches, roofline.element_bytes(raw["precision"]) or 0)
    peak = peaks.peak_memory_bandwidth(raw["environment_snapshot"]["gpus"][0]["name"])
    util = roofline.bandwidth_util(moved.total, raw["total_inference_time_sec"], peak)
    # 8 batches x 128 forward passes x 247 MB of bf16 weights, plus the KV cache
    assert moved.total == pytest.approx(291.497e9, rel=1e-5)
    assert util is not None and 0 < util < 1
    assert util == pytest.approx(0.00839, rel=1e-3)  # 40 GB/s of 4.8 TB/s: the eager loop is host-bound


def test_cli_summary_shows_mfu_and_bandwidth_utilization(tmp_path: Path) -> None:
    from llem_mlflow.run.execute import Outcome

    compute = ComputeFigures(prefill_flops=1.0, decode_flops=1.0, mfu=0.01375, memory_bandwidth_util=0.4512)
    result = build_result().model_copy(update={"compute": compute})
    text = cli.summary(Outcome(result=result, result_dir=tmp_path, run_id="abc"))
    assert "utilization     MFU 1.38%, memory bandwidth 45.1% of peak in decode" in text.splitlines()
    no_util = compute.model_copy(update={"memory_bandwidth_util": None})
    only_mfu = build_result().model_copy(update={"compute": no_util})
    assert "utilization     MFU 1.38%" in cli.summary(
        Outcome(result=only_mfu, result_dir=tmp_path, run_id="a")
    )
    assert "utilization" not in cli.summary(Outcome(result=build_result(), result_dir=tmp_path, run_id="a"))


@pytest.mark.parametrize(
    ("model", "kv_dim"), [("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 4 * 64), ("gpt2", 768)], ids=["gqa", "mha"]
)
def test_the_kv_width_comes_from_the_config_so_grouped_query_caches_are_not_overcounted(
    model: str, kv_dim: int
) -> None:
    from transformers import AutoConfig

    from llem_mlflow.backends.catalogue import shipped_config
    from llem_mlflow.backends.shape import config_shape

    raw = shipped_config(model)
    assert raw is not None
    shape = config_shape(AutoConfig.for_model(**raw))
    assert shape is not None and shape.kv_dim == kv_dim
    assert roofline.kv_bytes_per_position(shape, 2) == 2 * shape.n_layers * kv_dim * 2
