"""Issue 19's table sweep (benchmarks/sweeps/gpu_defaults_table.yaml): what it measures on a GPU.

The file stands for two tables in docs (repeatability with the GPU defaults, and eager vs generate()'s
compiled path vs the default on one workload); these tests pin that its points still say that once the
GPU defaults are applied, so a GPU session does not spend minutes measuring something else.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.config_gpu import GPU_DEFAULTS, with_gpu_defaults
from llem_mlflow.sweep.plan import load_sweep

TABLE = Path(__file__).resolve().parents[2] / "benchmarks" / "sweeps" / "gpu_defaults_table.yaml"
WORKLOAD = ("model", "n", "batch_size", "max_input_tokens", "max_output_tokens", "dataset", "seed", "weights")


def _on_gpu() -> list[tuple[Mapping[str, Any], ExperimentConfig]]:
    """Each point's given fields and its config as a CUDA run would hold it."""
    points = load_sweep(TABLE).points
    assert [p.error for p in points] == [None] * len(points)
    return [(p.overrides, with_gpu_defaults(p.config, "cuda")[0]) for p in points if p.config is not None]


def test_the_repeat_rows_take_every_gpu_default() -> None:
    repeat = [cfg for given, cfg in _on_gpu() if "compile" not in given]
    shapes = sorted((c.model, c.batch_size) for c in repeat)
    assert shapes == [
        ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 1),
        ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 64),
        ("gpt2", 64),
    ]
    for cfg in repeat:
        assert {name: getattr(cfg, name) for name in GPU_DEFAULTS} == GPU_DEFAULTS


def test_the_paths_rows_differ_only_in_the_decode_path() -> None:
    paths = [cfg for given, cfg in _on_gpu() if "compile" in given]
    assert sorted((c.compile, c.cache) for c in paths) == [
        ("graph", "static"),
        ("off", "dynamic"),
        ("reduce-overhead", "static"),
    ]
    workloads = {tuple(getattr(c, f) for f in WORKLOAD) for c in paths}
    default_run = load_config(None, model="gpt2", weights="random")  # the default run's workload
    assert workloads == {tuple(getattr(default_run, f) for f in WORKLOAD)}
    assert {(c.cycles, c.min_window_s, c.warmup_settle_cv_pct) for c in paths} == {
        (3, 5.0, GPU_DEFAULTS["warmup_settle_cv_pct"])
    }
