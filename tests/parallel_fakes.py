"""Worker parts for parallel sweeps on CPU: FakeBackends steered by environment variables.

A spawned worker cannot take a fixture, so ``worker_parts`` (module level: it crosses the spawn by
name) reads its instructions from the environment the test set before the sweep started:

* ``FAKE_BARRIER`` (a folder) and ``FAKE_WORKERS`` (n): a worker's first ``generate`` writes
  ``started-<its CUDA_VISIBLE_DEVICES>`` there and waits until n workers have started (at most
  ``BARRIER_WAIT_S``), then writes ``met-<gpu>`` = ``yes`` or ``timeout``: proof that the workers ran
  at the same time.
* ``FAKE_DIE_AT_BATCH`` (an int): generating a batch of that many rows kills the worker (``os._exit(3)``).
* ``FAKE_RAISE_AT_BATCH`` (an int): generating a batch of that many rows raises a RuntimeError.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fakes import FakeBackend

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.sweep.execute import Parts

BARRIER_WAIT_S = 120.0


def worker_parts() -> Parts:
    """Fakes for one worker: a FakeBackend per model, no memory to free, a store that answers."""
    return Parts(make_backend=_make, free_memory=lambda: None, store_probe=lambda cfg: None)


def _make(cfg: ExperimentConfig) -> FakeBackend:
    backend = FakeBackend()
    backend.on_generate = lambda: _on_generate(backend.generate_calls[-1][0])
    return backend


def _on_generate(rows: int) -> None:
    """Steered by the rows of the batch being generated (a loaded model serves several points)."""
    if rows == int(os.environ.get("FAKE_DIE_AT_BATCH", "-1")):
        os._exit(3)
    if rows == int(os.environ.get("FAKE_RAISE_AT_BATCH", "-1")):
        raise RuntimeError("CUDA out of memory (fake)")
    barrier = os.environ.get("FAKE_BARRIER")
    if barrier:
        _meet(Path(barrier), int(os.environ["FAKE_WORKERS"]))


def _meet(folder: Path, workers: int) -> None:
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "none")
    mark = folder / f"met-{gpu}"
    if mark.exists():
        return
    (folder / f"started-{gpu}").touch()
    deadline = time.monotonic() + BARRIER_WAIT_S
    while len(list(folder.glob("started-*"))) < workers and time.monotonic() < deadline:
        time.sleep(0.05)
    met = len(list(folder.glob("started-*"))) >= workers
    mark.write_text("yes" if met else "timeout")
