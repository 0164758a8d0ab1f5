"""Several measurements inside one active MLflow run: the first fills it, the next ones nest under it."""

from __future__ import annotations

from pathlib import Path

import mlflow
from fakes import FakeBackend
from mlflow.tracking import MlflowClient

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.run.execute import Outcome, execute
from llem_mlflow.tracking.client import LLEM_EXPERIMENT_TAG, PARENT_RUN_TAG


def _measure(tmp_path: Path, batch_size: int) -> Outcome:
    cfg = ExperimentConfig.model_validate(
        {
            "n": 4, "batch_size": batch_size, "max_input_tokens": 4, "max_output_tokens": 3,
            "baseline_s": 0.0, "output_dir": str(tmp_path / "out"),
        }
    )  # fmt: skip
    return execute(cfg, backend=FakeBackend(), store_probe=lambda c: None)


def test_three_measurements_in_one_active_run_are_never_merged(tmp_path: Path) -> None:
    with mlflow.start_run(run_name="mine") as parent:
        outcomes = [_measure(tmp_path, bs) for bs in (1, 2, 4)]
        assert mlflow.active_run() is not None and mlflow.active_run().info.run_id == parent.info.run_id  # type: ignore[union-attr]
    client = MlflowClient()
    first, *rest = outcomes
    assert first.run_id == parent.info.run_id  # an empty active run takes the first result
    runs = [client.get_run(o.run_id) for o in outcomes if o.run_id]
    assert len({r.info.run_id for r in runs}) == 3
    for outcome, run, batch_size in zip(outcomes, runs, (1, 2, 4), strict=True):
        assert run.data.params["batch_size"] == str(batch_size)
        assert run.data.tags[LLEM_EXPERIMENT_TAG] == outcome.result.experiment_id
        assert run.data.metrics["tokens/output"] == 4 * 3
    for run in runs[1:]:
        assert run.data.tags[PARENT_RUN_TAG] == parent.info.run_id
        assert run.info.status == "FINISHED"
        assert run.info.experiment_id == parent.info.experiment_id
    assert PARENT_RUN_TAG not in runs[0].data.tags
    assert len({o.result_dir for o in outcomes}) == 3
    assert all((o.result_dir / "result.json").is_file() for o in outcomes)
    assert client.get_run(parent.info.run_id).data.params["batch_size"] == "1"  # not overwritten
