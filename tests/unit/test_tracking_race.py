"""Two clients logging the same new dataset input at once: MLflow's store races (look up, then insert)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput
from mlflow.tracking import MlflowClient

from llem_mlflow.tracking import result_logging as tracking

ROUNDS = 20


def _log_many(uri: str, experiment_id: str, barrier: Any, errors: Any) -> None:
    client = MlflowClient(uri)
    failed = []
    for i in range(ROUNDS):
        run = client.create_run(experiment_id)
        dataset = DatasetInput(Dataset(name="synthetic", digest=f"d{i}", source_type="code", source="x"))
        barrier.wait()  # both processes log dataset d<i> at the same moment
        try:
            tracking._log_dataset(client, run.info.run_id, dataset)
        except Exception as exc:
            failed.append(str(exc)[-200:])
    errors.put(failed)


def test_two_processes_logging_the_same_new_datasets_both_succeed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'race.db'}"
    experiment_id = MlflowClient(uri).create_experiment("race")
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_log_many, args=(uri, experiment_id, barrier, errors)) for _ in range(2)]
    for p in procs:
        p.start()
    failed = [errors.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert failed == [[], []]  # without the retry: about 12 of 20 rounds fail on the unique key
    client = MlflowClient(uri)
    runs = client.search_runs([experiment_id], max_results=100)
    assert len(runs) == 2 * ROUNDS and all(len(r.inputs.dataset_inputs) == 1 for r in runs)


def test_a_failed_first_try_is_tried_once_more() -> None:
    class Flaky:
        def __init__(self, failures: int) -> None:
            self.failures, self.calls = failures, 0

        def log_inputs(self, run_id: str, datasets: list[DatasetInput]) -> None:
            self.calls += 1
            if self.calls <= self.failures:
                raise RuntimeError("UNIQUE constraint failed: datasets.experiment_id, datasets.name")

    dataset = DatasetInput(Dataset(name="synthetic", digest="d", source_type="code", source="x"))
    once = Flaky(1)
    tracking._log_dataset(once, "run", dataset)  # type: ignore[arg-type]
    assert once.calls == 2
    twice = Flaky(2)
    try:
        tracking._log_dataset(twice, "run", dataset)  # type: ignore[arg-type]
    except RuntimeError:
        pass
    else:
        raise AssertionError("a second failure must be raised")
