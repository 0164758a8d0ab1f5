"""Shared fixtures: Ctrl-C as in a terminal, MLflow isolation per test, a real tracking server, and a
realistic sample result."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from datetime import datetime, timezone

import pytest
from mlflow_server import start_server, stop_server

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.measure.trace import PowerTrace, TraceSample
from llem_mlflow.results.identity import resolve
from llem_mlflow.results.schema import (
    EnergyBreakdown,
    EnvironmentSnapshot,
    ExperimentResult,
    GpuEnergy,
    GpuSnapshot,
    Window,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
INTERVAL_S = 0.1
IDLE = (T0 + 0.05, T0 + 1.0)
MEASURE = (T0 + 1.5, T0 + 3.5)


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_as_in_a_terminal() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as in a terminal, even when the test run was started in the
    background (``cmd &`` in a non-interactive shell starts it with SIGINT ignored, and the tests that
    send themselves a Ctrl-C would then see nothing); the inherited disposition is put back after."""
    inherited = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


@pytest.fixture(autouse=True)
def isolated_mlflow(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Each test gets its own sqlite store and CWD (serverless sqlite puts ./mlruns in the CWD).

    Both live outside ``tmp_path`` so tests can assert on exactly what they wrote there.
    """
    workdir = tmp_path_factory.mktemp("mlflow-cwd")
    monkeypatch.chdir(workdir)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    monkeypatch.setenv("LLEM_MLFLOW_SPOOL_DIR", str(workdir / "spool"))  # never the user's own spool
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    yield uri
    if "mlflow" in sys.modules:  # never leak a fluent run into the next test
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (sqlite + proxied artifacts); yields its http URI."""
    proc, uri = start_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield uri
    finally:
        stop_server(proc)


def _trace() -> PowerTrace:
    samples = []
    for i in range(40):  # 4 s at 10 Hz, two GPUs: idle, gap, measure, tail
        t = T0 + i * INTERVAL_S
        busy = MEASURE[0] <= t <= MEASURE[1]
        for gpu in (0, 1):
            samples.append(
                TraceSample(
                    timestamp_s=t + gpu * 0.003,
                    gpu=gpu,
                    power_w=(310.5 if busy else 72.25) + gpu + (i % 3) * 0.5,
                    temperature_c=41.0 + i * 0.1,
                    sm_clock_mhz=1980.0 if busy else 345.0,
                    utilization_pct=97.0 if busy else (None if i == 0 else 0.0),
                    memory_used_b=8_000_000_000 + i,
                    throttle_reasons=None if i % 7 == 0 else 0,
                )
            )
    return PowerTrace(interval_s=INTERVAL_S, samples=samples)


def _environment() -> EnvironmentSnapshot:
    gpus = [
        GpuSnapshot(
            cuda_index=i,
            nvml_index=i,
            name="NVIDIA H200",
            uuid=f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
            memory_total_b=150_000_000_000,
            power_limit_w=700.0,
        )
        for i in (0, 1)
    ]
    return EnvironmentSnapshot(
        python_version="3.11.7",
        platform="Linux-6.1-x86_64",
        packages={"torch": "2.5.1", "transformers": "4.46.0", "mlflow": "3.17.2"},
        cuda_runtime="12.4",
        driver_version="550.54.15",
        gpus=gpus,
        git_commit="0123456789abcdef0123456789abcdef01234567",
        git_dirty=False,
    )


def _energy() -> EnergyBreakdown:
    per_gpu = [
        GpuEnergy(
            cuda_index=i,
            uuid=f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
            gross_j=650.0 + i,
            idle_power_w=72.5,
            net_j=505.0 + i,
            trace_integral_j=640.0,
            counter_vs_trace_pct=1.5 - 3 * i,
            samples_in_window=21,
        )
        for i in (0, 1)
    ]
    return EnergyBreakdown(
        gross_j=1301.0,
        idle_power_w=145.0,
        idle_duration_s=0.95,
        net_j=1011.0,
        edge_uncertainty_j=28.0,
        per_gpu=per_gpu,
    )


def build_result(energy: bool = True) -> ExperimentResult:
    """A realistic two-GPU result; ``energy=False`` gives a CPU-style result without energy."""
    cfg = ExperimentConfig.model_validate(
        {"model": "gpt2", "n": 4, "batch_size": 2, "precision": "bf16", "device": "cuda"}
    )
    resolved = resolve(
        cfg,
        weights="pretrained",
        precision="bf16",
        device="cuda",
        revision="607a30d783dfa663caf39e06633721c8d4cfcd7e",
        dataset="synthetic",
        tokenizer=None,
    )
    return ExperimentResult(
        experiment_id="gpt2-bf16-20260101T000000Z-abc123",
        measurement_config_hash=resolved.measurement_hash(),
        llem_version="0.1.0",
        config=cfg,
        resolved=resolved,
        model="gpt2",
        backend="pytorch",
        weights="pretrained",
        precision="bf16",
        device="cuda",
        input_tokens=128,
        output_tokens=128,
        total_tokens=256,
        total_energy_j=1301.0 if energy else None,
        total_inference_time_sec=2.0,
        avg_tokens_per_second=64.0,
        avg_energy_per_token_j=10.1640625 if energy else None,
        total_flops=3.2e10,
        flops_method="2*params*tokens",
        energy_source="nvml" if energy else "none",
        energy=_energy() if energy else None,
        model_load_time_sec=1.25,
        start_time=datetime.fromtimestamp(T0, tz=timezone.utc),
        end_time=datetime.fromtimestamp(MEASURE[1], tz=timezone.utc),
        windows={
            "idle": Window(start_s=IDLE[0], end_s=IDLE[1]),
            "measure": Window(start_s=MEASURE[0], end_s=MEASURE[1]),
        },
        environment_snapshot=_environment(),
        timeseries="timeseries.parquet",
    )


@pytest.fixture
def sample_result() -> tuple[ExperimentResult, PowerTrace]:
    """(ExperimentResult with energy, its two-GPU PowerTrace of 80 samples)."""
    return build_result(), _trace()


@pytest.fixture
def cpu_result() -> ExperimentResult:
    """A result without energy (``energy_source="none"``), as a CPU run produces."""
    return build_result(energy=False)
