"""The server scenario end to end on CPU: a real HTTP server (``OpenAIStub``), the real client, load
generator, stages, figures, result and files; the GPU is a fake board whose power follows the requests in
flight, so energy, steady-state windows and per-request joules are real arithmetic on known physics."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from openai_stub import OpenAIStub

from llem_mlflow.backends.server import ServerBackend
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import ConfigError
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.run.execute import GpuSet, execute
from tests.fakes import FakeDevice

CUDA0 = CudaDeviceId(0, "GPU-fake-0", None)


@pytest.fixture(autouse=True)
def no_server_survives() -> Iterator[None]:
    """After every test here: no launched server is still registered, and no process running the
    stand-in server script is left (whatever the test did: finish, fail, be interrupted)."""
    from llem_mlflow.serving import process

    yield
    assert not process._RUNNING
    assert _processes_naming("fake_openai_server.py") == []


def _processes_naming(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if proc.name.isdigit() and text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


class LoadBoard:
    """A GPU drawing ``idle_w`` plus ``per_request_w`` per request the stub has in flight; its counter
    integrates that power every millisecond (a thread), so energy rises with the load."""

    def __init__(self, stub: OpenAIStub, idle_w: float = 80.0, per_request_w: float = 40.0) -> None:
        self.stub, self.idle_w, self.per_request_w = stub, idle_w, per_request_w
        self.energy_j = 0.0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._integrate, daemon=True)
        self.device = FakeDevice(
            cuda_index=0, uuid=CUDA0.uuid, energy_script=lambda: self.energy_j, power_w=self.power_w
        )

    def power_w(self) -> float:
        return self.idle_w + self.per_request_w * self.stub.in_flight

    def _integrate(self) -> None:
        last = time.perf_counter()
        while not self._halt.wait(0.001):
            now = time.perf_counter()
            self.energy_j += self.power_w() * (now - last)
            last = now

    def __enter__(self) -> LoadBoard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join()


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(shape="vllm", tokens_per_chunk=2, delay_s=0.01) as server:
        yield server


def _cfg(tmp_path: Path, url: str, **kw: Any) -> ExperimentConfig:
    values: dict[str, Any] = {
        "scenario": "server",
        "server_url": url,
        "model": "gpt2",
        "n": 12,
        "max_input_tokens": 8,
        "max_output_tokens": 6,
        "concurrency": 4,
        "baseline_s": 0.2,
        "idle_after_s": 0.0,
        "sampling_interval_s": 0.005,
        "power_sampling": "poll",
        "output_dir": str(tmp_path / "out"),
        "mlflow": False,
        **kw,
    }
    return ExperimentConfig.model_validate(values)


def _run(cfg: ExperimentConfig, board: LoadBoard | None, tmp_path: Path) -> Any:
    gpus = (lambda wanted: [CUDA0]) if board else (lambda wanted: [])
    backend = ServerBackend(cfg, gpus, tmp_path / "logs")
    provider = (lambda ids: GpuSet([board.device], "580")) if board else None
    return execute(cfg, backend=backend, gpus=provider, store_probe=lambda c: None)


def test_a_closed_loop_run_counts_usage_tokens_and_apportions_every_net_joule(
    tmp_path: Path, stub: OpenAIStub
) -> None:
    cfg = _cfg(tmp_path, stub.url, cycles=2)
    with LoadBoard(stub) as board:
        outcome = _run(cfg, board, tmp_path)
    result = outcome.result
    s = result.serving
    assert result.scenario == "server" and s is not None and s.engine != "" and s.load == "closed"
    assert s.requests == 24 and s.completed == 24 and s.failed == 0 and s.error_rate == 0
    assert result.output_tokens == 24 * 6  # from usage, though the stub sends 2 tokens per chunk
    assert stub.max_in_flight == 4
    assert s.latency.ttft_s is not None and s.latency.itl_s is not None and s.latency.e2e_s is not None
    assert result.energy is not None and result.energy.net_j is not None and result.energy.net_j > 0
    table = pq.read_table(outcome.result_dir / "requests.parquet").to_pylist()
    assert len(table) == 24 and sum(r["output_tokens"] for r in table) == result.output_tokens
    assert all(r["chunks"] == 3 for r in table)  # 6 tokens in chunks of 2: chunks are not tokens
    joules = [r["net_j"] for r in table]
    assert all(j is not None and j >= 0 for j in joules)
    assert math.isclose(math.fsum(joules), result.energy.net_j, rel_tol=1e-9)
    assert s.per_request is not None and s.per_request.per_request_j is not None
    assert len(s.steady) == 2 and all(0 < w.occupancy <= 1 for w in s.steady)
    assert all(w.gross_j is not None and w.gross_j > 0 for w in s.steady)
    metrics = result.mlflow_metrics()
    assert metrics["serving/requests"] == 24 and "latency/ttft_p50_s" in metrics
    assert "energy/per_request_net_j_p50" in metrics and "steady/occupancy" in metrics
    ci = s.cycle_intervals  # 2 cycles: each cycle's figures, no 95 % bounds below 3
    assert ci is not None and ci.ttft_p50_s is not None and ci.itl_p99_s is not None
    assert ci.ttft_p50_s.n == 2 and ci.ttft_p50_s.ci95_low is None and ci.net_per_request_j is not None
    assert math.isclose(ci.net_per_request_j.mean, s.net_per_request_j or 0, rel_tol=1e-9)  # 12 + 12 done
    assert "latency/ttft_p50_s_ci95_low" not in metrics
    assert result.mlflow_tags()["llem.scenario"] == "server"
    assert result.resolved is not None and result.resolved.backend == "server"
    assert result.resolved.backend_options["concurrency"] == 4
    assert s.gpu_processes == ["GPU 0: NVML does not list its processes"]  # the fake lists none


def test_the_processes_nvml_lists_are_named() -> None:
    from llem_mlflow.measure.serving import gpu_processes

    class Listed(FakeDevice):
        def compute_pids(self) -> list[int]:
            return [os.getpid()]

    class Failing(FakeDevice):
        def compute_pids(self) -> list[int]:
            raise RuntimeError("GPU is lost")

    seen = gpu_processes([Listed(cuda_index=0), Failing(cuda_index=1)])
    assert seen[0] == f"GPU 0: pid {os.getpid()} ({Path('/proc/self/comm').read_text().strip()})"
    assert seen[1] == "GPU 1: its process list could not be read (GPU is lost)"


def test_the_load_is_in_the_hash_and_the_url_is_not(tmp_path: Path, stub: OpenAIStub) -> None:
    hashes = []
    for kw in ({}, {"concurrency": 2}, {}):
        cfg = _cfg(tmp_path, stub.url, n=4, baseline_s=0.0, **kw)
        hashes.append(_run(cfg, None, tmp_path).result.measurement_config_hash)
    assert hashes[0] == hashes[2] != hashes[1]


def test_failed_requests_are_counted_not_tokens_and_flagged(tmp_path: Path) -> None:
    with OpenAIStub(shape="sglang", fail_every=3) as server:
        outcome = _run(_cfg(tmp_path, server.url, n=9, baseline_s=0.0, warmup_batches=0), None, tmp_path)
    s = outcome.result.serving
    assert s is not None and s.failed == 3 and s.completed == 6
    assert outcome.result.output_tokens == 6 * 6
    assert s.errors == {"HTTP 500": 3}
    assert any("3 requests of 9 failed" in w for w in outcome.result.warnings)
    assert outcome.result.energy is None  # no GPU: energy is not measured, every other figure is


def test_an_open_loop_run_has_no_steady_window(tmp_path: Path, stub: OpenAIStub) -> None:
    cfg = _cfg(tmp_path, stub.url, concurrency=None, request_rate=200.0, n=10, baseline_s=0.0)
    s = _run(cfg, None, tmp_path).result.serving
    assert s is not None and s.load == "open" and s.request_rate == 200.0 and s.steady == []
    assert s.completed == 10


def test_a_server_that_does_not_answer_is_an_error_before_measuring(tmp_path: Path) -> None:
    from llem_mlflow.errors import BackendError
    from llem_mlflow.serving.process import free_port

    cfg = _cfg(tmp_path, f"http://127.0.0.1:{free_port()}", n=2)
    with pytest.raises(BackendError, match="no server answers"):
        _run(cfg, None, tmp_path)
    assert not list((tmp_path / "out").glob("*/result.json"))


@pytest.mark.parametrize(
    ("kw", "named"),
    [
        ({"server_url": None}, "exactly one of server_command"),
        ({"server_url": None, "server_command": "vllm serve {model}"}, "has no {port}"),
        ({"measurement_methodology": "steady_state"}, "measurement_methodology"),
        ({"request_rate": 2.0}, "not both"),
        ({"server_url": "127.0.0.1:8000"}, "not an http"),
    ],
)
def test_bad_server_settings_are_refused_before_anything_starts(kw: dict[str, Any], named: str) -> None:
    values = {"scenario": "server", "server_url": "http://127.0.0.1:1", "concurrency": 2, **kw}
    with pytest.raises(ConfigError, match=named.replace("{", r"\{").replace("}", r"\}")):
        from llem_mlflow.config import load_config

        load_config(values)


def test_a_launched_server_that_dies_mid_load_leaves_a_partial_result(tmp_path: Path) -> None:
    from llem_mlflow.errors import RunInterrupted
    from llem_mlflow.run.execute import execute as run

    script = Path(__file__).resolve().parents[1] / "fixtures" / "fake_openai_server.py"
    command = f"{sys.executable} {script} --port {{port}} --die-after 4"
    cfg = _cfg(tmp_path, "", server_url=None, server_command=command, n=400, concurrency=2, baseline_s=0.0)
    with pytest.raises(RunInterrupted) as stopped:
        run(cfg, store_probe=lambda c: None)  # the run makes (and so releases) its server backend
    outcome = stopped.value.outcome
    result = outcome.result
    assert result.status == "interrupted" and result.serving is not None
    assert 0 < result.serving.completed < 400
    assert any("the server exited with code 4" in w for w in result.warnings)
    assert (outcome.result_dir / "requests.parquet").is_file()


def test_the_servers_gpus_are_found_by_index_or_uuid_and_a_wrong_one_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llem_mlflow.run.serve import server_gpus
    from tests.fakes import FakeGpu, FakeNvml

    gpus = [FakeGpu("GPU-aaaa-0", "00000000:19:00.0"), FakeGpu("GPU-bbbb-1", "00000000:3B:00.0")]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [g.uuid for g in server_gpus(None, FakeNvml(gpus))] == ["GPU-aaaa-0", "GPU-bbbb-1"]
    only = server_gpus("1", FakeNvml(gpus))
    assert only == [CudaDeviceId(0, "GPU-bbbb-1", "00000000:3B:00.0")]  # the server's first GPU
    assert [g.uuid for g in server_gpus("GPU-bbbb", FakeNvml(gpus))] == ["GPU-bbbb-1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # what a launched server inherits
    assert [g.uuid for g in server_gpus(None, FakeNvml(gpus))] == ["GPU-bbbb-1"]
    with pytest.raises(ConfigError, match="names a GPU NVML does not see"):
        server_gpus("0,7", FakeNvml(gpus))
    with pytest.raises(ConfigError, match="NVML cannot be opened"):
        server_gpus("0", FakeNvml([], fail_init=True))


def test_a_served_model_of_unknown_family_logs_no_flops_rather_than_zero(
    tmp_path: Path, stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llem_mlflow.backends import server

    monkeypatch.setattr(server, "config_shape", lambda config: None)
    result = _run(_cfg(tmp_path, stub.url, n=4, baseline_s=0.0), None, tmp_path).result
    assert result.compute is None and result.flops_method.startswith("none")
    assert "compute/flops" not in result.mlflow_metrics()
    assert any("FLOPs are not reported" in w for w in result.warnings)


def test_an_attached_server_that_does_not_name_itself_is_named_by_its_gpu_process() -> None:
    from llem_mlflow.run.derive_serving import engine_from_processes

    seen = ["GPU 0: pid 1224 (transformers)"]
    assert engine_from_processes("unknown", seen)[0] == "transformers"  # the H100 attach runs' case
    assert "did not name itself" in engine_from_processes("unknown", seen)[1][0]
    assert engine_from_processes("unknown", ["GPU 0: pid 7 (VLLM::EngineCor)"])[0] == "vllm"
    assert engine_from_processes("vllm", seen) == ("vllm", [])  # what the server said stands
    two = ["GPU 0: pid 7 (VLLM::EngineCor)", "GPU 0: pid 8 (transformers)"]
    assert engine_from_processes("unknown", two) == ("unknown", [])  # two engines: no guess
    assert engine_from_processes("unknown", ["GPU 0: pid 9 (python3)"]) == ("unknown", [])
    assert engine_from_processes("unknown", ["GPU 0: NVML does not list its processes"]) == ("unknown", [])
