"""The MLflow keys README.md documents, as literals: renaming a metric, tag or param fails here.

Nothing here is derived from the code that logs (no ``result.mlflow_metrics()``): a sample result
goes to a real sqlite store and the run read back must hold exactly these names and values.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult, Timings
from llem_mlflow.tracking import recording

Sample = tuple[ExperimentResult, PowerTrace]

METRICS = {
    "energy/total_j",
    "energy/gross_j",
    "energy/net_j",
    "energy/idle_w",
    "energy/per_output_token_j",
    "energy/net_per_output_token_j",
    "energy/edge_uncertainty_j",
    "quality/counter_vs_trace_pct",
    "throughput/output_tokens_per_s",
    "time/inference_s",
    "time/model_load_s",
    "compute/flops",
    "tokens/input",
    "tokens/output",
    "tokens/total",
    "power/gpu0_w",
    "power/gpu1_w",
    "energy/gpu0_j",
    "energy/gpu1_j",
}
#: A result.json ``timings`` block as a CLI run on a GPU writes it (log_s is never in it).
TIMINGS = Timings(
    startup_s=1.0,
    checks_s=0.8,
    load_s=12.0,
    import_wait_s=0.0,
    warmup_s=3.0,
    baseline_s=3.0,
    measure_s=6.8,
    idle_after_s=3.0,
    derive_s=0.2,
    write_s=0.05,
    total_s=29.0,
)
TIMING_METRICS = {
    "time/stage/startup_s",
    "time/stage/checks_s",
    "time/stage/load_s",
    "time/stage/import_wait_s",
    "time/stage/warmup_s",
    "time/stage/baseline_s",
    "time/stage/measure_s",
    "time/stage/idle_after_s",
    "time/stage/derive_s",
    "time/stage/write_s",
    "time/stage/total_s",
}
DOCUMENTED_TAGS = {
    "llem.config_hash",
    "llem.schema_version",
    "llem.status",
    "llem.version",
    "llem.energy_source",
    "llem.weights",
    "llem.gpu.name",
    "llem.gpu.count",
    "llem.env.driver",
    "llem.env.cuda",
    "llem.env.torch",
    "llem.env.transformers",
    "llem.env.python",
    "llem.scenario",
}
OTHER_LLEM_TAGS = {
    "llem.experiment_id",
    "llem.hash_recipe",
    "llem.precision",
    "llem.device",
    "llem.gpu.uuids",
    "llem.git.commit",
    "llem.create_token",  # exactly-once: finds the run a create whose reply was lost made (tracking.py)
}
CONFIG_PARAMS = {
    "model",
    "backend",
    "n",
    "batch_size",
    "precision",
    "max_input_tokens",
    "max_output_tokens",
    "dataset",
    "weights",
    "device",
    "seed",
    "warmup_batches",
    "baseline_s",
    "sampling_interval_s",
    "cycles",
    "cooldown_s",
    "warmup_max_batches",
    "idle_settle_max_s",
    "measurement_methodology",
    "isolated_prefill",
    "cache",
    "compile",
    "attention",
    "min_window_s",
}
RESOLVED_PARAMS = {  # prompt_field and tokenizer are null for synthetic prompts: not logged
    "resolved.recipe",
    "resolved.model",
    "resolved.model_revision",
    "resolved.backend",
    "resolved.backend_options",
    "resolved.weights",
    "resolved.precision",
    "resolved.device",
    "resolved.n",
    "resolved.batch_size",
    "resolved.max_input_tokens",
    "resolved.max_output_tokens",
    "resolved.dataset",
    "resolved.seed",
    "resolved.warmup_batches",
    "resolved.baseline_s",
    "resolved.sampling_interval_s",
    "resolved.cycles",
    "resolved.cooldown_s",
    "resolved.warmup_max_batches",
    "resolved.measurement_methodology",
    "resolved.isolated_prefill",
    "resolved.idle_settle_max_s",
    "resolved.gpus",
    "resolved.cache",
    "resolved.compile",
    "resolved.attention",
    "resolved.min_window_s",
}


def log_sample(result: ExperimentResult, trace: PowerTrace, folder: Path) -> str:
    folder.mkdir()
    artifacts.write_result_json(result, folder)
    artifacts.write_trace_parquet(trace, folder, {k: (w.start_s, w.end_s) for k, w in result.windows.items()})
    return recording.log_folder(folder, None, "names", None).run_id


def test_documented_keys_are_logged_literally(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    client = MlflowClient()
    run = client.get_run(log_sample(result, trace, tmp_path / "out"))

    assert set(run.data.metrics) == METRICS
    llem_tags = {k for k in run.data.tags if k.startswith("llem.")}
    assert llem_tags == DOCUMENTED_TAGS | OTHER_LLEM_TAGS
    assert set(run.data.params) >= CONFIG_PARAMS
    assert {k for k in run.data.params if k.startswith("resolved.")} == RESOLVED_PARAMS
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == [
        "result.json",
        "timeseries.parquet",
    ]
    assert all(not a.is_dir for a in client.list_artifacts(run.info.run_id))


def test_timings_add_time_stage_metrics(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    timed = result.model_copy(update={"timings": TIMINGS})
    metrics = MlflowClient().get_run(log_sample(timed, trace, tmp_path / "out")).data.metrics
    assert set(metrics) == METRICS | TIMING_METRICS
    assert metrics["time/stage/measure_s"] == 6.8 and metrics["time/stage/import_wait_s"] == 0.0


def test_documented_values(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    run = MlflowClient().get_run(log_sample(result, trace, tmp_path / "out"))
    metrics, tags, params = run.data.metrics, run.data.tags, run.data.params

    assert metrics["energy/total_j"] == 1301.0
    assert metrics["energy/per_output_token_j"] == 10.1641  # 10.1640625 J/token, 6 significant digits
    assert metrics["tokens/total"] == 256.0
    assert metrics["compute/flops"] == 32_000_000_000.0
    assert tags["llem.gpu.name"] == "NVIDIA H200" and tags["llem.gpu.count"] == "2"
    assert tags["llem.energy_source"] == "nvml" and tags["llem.schema_version"] == "2.0"
    assert tags["llem.hash_recipe"] == "7"
    assert params["resolved.backend_options"] == "{}"
    assert params["batch_size"] == "2" and params["resolved.precision"] == "bf16"
    assert run.info.run_name == "gpt2-bs2-bf16"


def test_metric_values_are_rounded_to_their_precision(sample_result: Sample, tmp_path: Path) -> None:
    result, trace = sample_result
    assert result.energy is not None
    gaps = [
        g.model_copy(update={"counter_vs_trace_pct": pct})
        for g, pct in zip(result.energy.per_gpu, (0.5, -1.23456789), strict=True)
    ]
    noisy = result.model_copy(
        update={
            "total_energy_j": 266.0649999999987,
            "energy": result.energy.model_copy(
                update={"idle_power_w": 72.50049999, "net_j": 1011.00000004, "per_gpu": gaps}
            ),
            "avg_tokens_per_second": 63.999999999997,
            "avg_energy_per_token_j": 2.078632812499990,
            "total_inference_time_sec": 2.00000049999,
            "total_flops": 32_000_000_000.4,
        }
    )
    metrics = MlflowClient().get_run(log_sample(noisy, trace, tmp_path / "out")).data.metrics

    assert metrics["energy/total_j"] == 266.065
    assert metrics["energy/idle_w"] == 72.5
    assert metrics["energy/net_j"] == 1011.0
    assert metrics["throughput/output_tokens_per_s"] == 64.0
    assert metrics["energy/per_output_token_j"] == 2.07863
    assert metrics["time/inference_s"] == 2.0
    assert metrics["compute/flops"] == 32_000_000_000.0
    assert metrics["quality/counter_vs_trace_pct"] == -1.2346
