"""Soak: 50 short experiments back to back against one local tracking server, with random injected faults.

    python scripts/soak.py [--runs 50] [--seed 1] [--keep DIR]

Each experiment runs in this process through the real runner (``runner.execute``) with a fake model on a
fake GPU (``tests/fakes.py``), logging over HTTP to a real ``mlflow server`` (sqlite store) on 127.0.0.1.
Faults, one drawn per experiment (seeded): none; the server stopped during the run and started again
after it; the server down for the whole run; an NVML read error at a window edge; the GPU lost mid-run;
Ctrl-C (KeyboardInterrupt) in the second cycle. Afterwards every experiment must be on the server (a run
tagged with its ``llem.experiment_id``, FINISHED, or KILLED when interrupted) or in the spool:

    N/50 on server, M spooled, 0 lost

then ``llem-mlflow sync`` (the real CLI) uploads the spool and the check runs again: ``50/50 on server``.
Exit 1 when anything is lost, or not on the server after sync.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mlflow_server import free_port, start_server, stop_server  # noqa: E402

from tests.fakes import FakeBackend, FakeDevice  # noqa: E402

FAULTS = ("none", "server restart", "server down", "nvml error", "gpu lost", "interrupt")


class Server:
    """The tracking server, stoppable and restartable on its port with its data."""

    def __init__(self, data: Path) -> None:
        self.data, self.port, self.proc = data, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.proc is None:
            self.proc, _ = start_server(self.data, self.port)

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc)
            self.proc = None


def _config(out: Path, uri: str, i: int) -> object:
    from llem_mlflow.config import ExperimentConfig

    return ExperimentConfig.model_validate(
        dict(
            n=4,
            batch_size=2,
            max_input_tokens=4,
            max_output_tokens=3,
            cycles=2,
            baseline_s=0.05,
            idle_settle_max_s=0,
            sampling_interval_s=0.005,
            seed=i,
            output_dir=str(out),
            tracking_uri=uri,
            experiment_name="soak",
            run_name=f"soak-{i:02d}",
        )  # fmt: skip
    )


def _on_call(call: int, action: Callable[[], None]) -> Callable[[], None]:
    count = {"n": 0}

    def hook() -> None:
        count["n"] += 1
        if count["n"] == call:
            action()

    return hook


def _interrupt() -> None:
    raise KeyboardInterrupt


def _one(i: int, fault: str, server: Server, out: Path) -> str | None:
    """Run experiment ``i`` with ``fault``; its llem experiment id (None: nothing was kept)."""
    from llem_mlflow.errors import DeviceError, RunInterrupted
    from llem_mlflow.protocols import CudaDeviceId
    from llem_mlflow.runner import GpuSet, execute

    cuda0 = CudaDeviceId(cuda_index=0, uuid="GPU-soak-0", pci_bus_id=None)
    energy: list[object] = [float(1000 * k) for k in range(1, 400)]
    device = FakeDevice(energy_script=energy, power_w=150.0)
    hook: Callable[[], None] | None = None
    if fault == "server restart":
        hook = _on_call(3, server.stop)  # during cycle 1: logging at the end finds it down
    elif fault == "server down":
        server.stop()
    elif fault == "nvml error":
        energy[4] = DeviceError("NVML read failed: Unknown Error (injected)")  # what NvmlDevice raises
    elif fault == "gpu lost":
        hook = _on_call(4, device.lose)
    elif fault == "interrupt":
        hook = _on_call(4, _interrupt)  # 1 warm-up + 2 batches per cycle: call 4 opens cycle 2

    def gpus(ids: Sequence[CudaDeviceId]) -> GpuSet:
        return GpuSet(devices=[device], driver_version="580.159.04")

    backend = FakeBackend(device="cuda", cuda_devices=[cuda0], on_generate=hook)
    try:
        outcome = execute(_config(out, server.uri, i), backend=backend, gpus=gpus)  # type: ignore[arg-type]
    except RunInterrupted as stop:
        kept = stop.outcome
        return kept.result.experiment_id if kept is not None else None  # type: ignore[attr-defined]
    finally:
        server.start()  # every fault ends with the server back up
    return outcome.result.experiment_id


def _on_server(uri: str, ids: set[str]) -> set[str]:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("soak")
    if exp is None:
        return set()
    runs = client.search_runs([exp.experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
    held = set()
    for run in runs:
        llem_id = run.data.tags.get("llem.experiment_id")
        ok = run.info.status == "FINISHED" or (
            run.info.status == "KILLED" and run.data.tags.get("llem.status") == "interrupted"
        )
        if llem_id in ids and ok:
            held.add(llem_id)
    return held


def _spooled(ids: set[str]) -> set[str]:
    from llem_mlflow import spool

    return {e.llem_id for e in spool.pending()} & ids


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--runs", type=int, default=50)
    args.add_argument("--seed", type=int, default=1)
    args.add_argument("--keep", type=Path, help="keep the server data, results and spool here")
    opts = args.parse_args()
    logging.basicConfig(level=logging.ERROR, format="[soak] %(message)s")
    work = Path(opts.keep or tempfile.mkdtemp(prefix="llem-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update({"LLEM_MLFLOW_SPOOL_DIR": str(work / "spool"), "MLFLOW_DISABLE_TELEMETRY": "true",
                       "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"})  # fmt: skip
    server = Server(work / "server")
    server.start()
    rng = random.Random(opts.seed)
    ids: dict[int, str | None] = {}
    faults = Counter()
    started = time.monotonic()
    try:
        for i in range(1, opts.runs + 1):
            fault = rng.choice(FAULTS)
            faults[fault] += 1
            ids[i] = _one(i, fault, server, work / "results")
            print(f"[soak] {i:02d} {fault:<15} {ids[i] or 'nothing kept'}", flush=True)
        kept = {v for v in ids.values() if v}
        on_server, spooled = _on_server(server.uri, kept), _spooled(kept)
        lost = opts.runs - len(on_server | spooled)
        print(f"[soak] faults: {dict(faults)}; {time.monotonic() - started:.0f} s")
        print(
            f"{len(on_server)}/{opts.runs} on server, {len(spooled - on_server)} spooled, {lost} lost",
            flush=True,
        )
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        sync = subprocess.run(
            [sys.executable, "-m", "llem_mlflow", "sync"], env=env, capture_output=True, text=True
        )
        after = _on_server(server.uri, kept)
        print(f"[soak] sync exit {sync.returncode}: {sync.stdout.count(' logged')} logged")
        print(f"{len(after)}/{opts.runs} on server after sync", flush=True)
    finally:
        server.stop()
    return 0 if lost == 0 and len(after) == opts.runs else 1


if __name__ == "__main__":
    sys.exit(main())
