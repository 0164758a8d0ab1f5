"""Sweeps: expansion and validation of the ``sweep:`` section, and whole sweeps on fakes + real sqlite."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakes import FakeBackend
from mlflow.tracking import MlflowClient

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import ConfigError
from llem_mlflow.sweep import execute as sweep
from llem_mlflow.tracking.client import PARENT_RUN_TAG

BASE: dict[str, Any] = {"n": 4, "max_input_tokens": 4, "max_output_tokens": 3, "baseline_s": 0.0}


# ---------------------------------------------------------------- expansion


def test_a_mapping_gives_the_cartesian_product_in_field_order() -> None:
    points = sweep.expand({"batch_size": [1, 8], "precision": ["fp32", "bf16", "fp16"]})
    assert len(points) == 6
    assert points[0] == {"batch_size": 1, "precision": "fp32"}
    assert points[-1] == {"batch_size": 8, "precision": "fp16"}
    assert len({json.dumps(p, sort_keys=True) for p in points}) == 6


def test_a_list_gives_exactly_its_variants() -> None:
    variants = [{"batch_size": 1}, {"batch_size": 8, "precision": "bf16"}]
    assert sweep.expand(variants) == variants


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"colour": [1]}, "colour"),
        ({"batch_size": 4}, "sweep.batch_size"),
        ({"batch_size": []}, "sweep.batch_size"),
        ([{"batch_size": 1}, {"colour": 2}], "sweep[1].colour"),
        ([{"batch_size": 1}, 3], "sweep[1]"),
        ({"output_dir": ["a", "b"]}, "output_dir"),
        ("batch_size", "sweep:"),
        ({}, "sweep:"),
    ],
)
def test_a_bad_section_is_a_config_error_naming_the_field(section: object, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("[", r"\[").replace("]", r"\]")):
        sweep.expand(section)


def test_invalid_and_repeated_points_are_kept_with_their_reason() -> None:
    data = {
        **BASE,
        "sweep": [{"batch_size": 2}, {"batch_size": 0}, {"compile": "default"}, {"batch_size": 2}],
    }
    plan = sweep.plan_sweep(data)
    by_label = {p.label: p for p in plan.points}
    assert (
        by_label['{"batch_size":0}'].error is not None and "batch_size" in by_label['{"batch_size":0}'].error
    )
    assert "cache: static" in (by_label['{"compile":"default"}'].error or "")
    repeats = [p for p in plan.points if p.label == '{"batch_size":2}']
    assert sorted(p.error or "" for p in repeats) == ["", 'same measurement as point {"batch_size":2}']
    assert sum(p.config is not None for p in plan.points) == 1


def test_the_order_is_a_seeded_shuffle() -> None:
    data = {**BASE, "sweep": {"batch_size": [1, 2, 3, 4, 5, 6, 7, 8]}}
    order = [p.label for p in sweep.plan_sweep(data).points]
    assert order == [p.label for p in sweep.plan_sweep(data).points]  # stable
    assert order != [p.label for p in sweep.plan_sweep({**data, "seed": 7}).points]  # the seed decides
    assert sorted(order) == sorted(json.dumps({"batch_size": b}).replace(" ", "") for b in range(1, 9))
    assert order != sorted(order, key=lambda s: int(s.split(":")[1][:-1]))  # shuffled, not file order


def test_a_flag_on_a_swept_field_is_refused() -> None:
    with pytest.raises(ConfigError, match="batch_size: is swept"):
        sweep.plan_sweep({**BASE, "sweep": {"batch_size": [1, 2]}}, batch_size=4)


def test_points_share_a_model_unless_what_loads_differs() -> None:
    def cfg(**kw: Any) -> ExperimentConfig:
        return ExperimentConfig.model_validate({**BASE, **kw})

    same = {sweep.load_key(cfg(batch_size=b, n=n, cycles=c)) for b, n, c in [(1, 4, 1), (8, 16, 3)]}
    assert len(same) == 1
    assert sweep.load_key(cfg(precision="fp32")) != sweep.load_key(cfg(precision="bf16"))
    static = [cfg(cache="static", max_output_tokens=t) for t in (3, 5)]
    assert sweep.load_key(static[0]) != sweep.load_key(static[1])  # the static cache's length


# ---------------------------------------------------------------- whole sweeps


def _file(tmp_path: Path, section: object, **extra: Any) -> Path:
    path = tmp_path / "sweep.yaml"
    data = {
        **BASE,
        "output_dir": str(tmp_path / "out"),
        "experiment_name": "sweeps",
        **extra,
        "sweep": section,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Backends:
    """A FakeBackend factory that remembers what it built."""

    def __init__(self) -> None:
        self.built: list[FakeBackend] = []
        self.freed = 0

    def make(self, cfg: ExperimentConfig) -> FakeBackend:
        self.built.append(FakeBackend())
        return self.built[-1]

    def free(self) -> None:
        self.freed += 1

    def parts(self) -> sweep.Parts:
        return sweep.Parts(make_backend=self.make, free_memory=self.free, store_probe=lambda c: None)


def _children(client: MlflowClient, parent_id: str) -> list[Any]:
    exp = client.get_experiment_by_name("sweeps")
    assert exp is not None
    return list(client.search_runs([exp.experiment_id], f"tags.`{PARENT_RUN_TAG}` = '{parent_id}'"))


def test_a_sweep_is_a_parent_with_a_finished_child_per_point_and_resumes(tmp_path: Path) -> None:
    path = _file(tmp_path, {"batch_size": [1, 2, 4, 0]})
    backends = Backends()
    outcome = sweep.run_sweep(path, backends.parts())
    client = MlflowClient()

    assert outcome.parent_run_id is not None
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "sweep-gpt2-4"
    assert parent.data.tags["llem.sweep.id"] == outcome.plan.sweep_id
    assert parent.data.tags["llem.sweep.fields"] == "batch_size"
    children = _children(client, outcome.parent_run_id)
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    assert sorted(json.loads(c.data.tags["llem.sweep.point"])["batch_size"] for c in children) == [1, 2, 4]
    assert all(c.data.metrics["tokens/output"] == 12 for c in children)
    assert len(backends.built) == 1 and backends.built[0].load_calls == 1  # one model for three points
    assert backends.freed == 1

    statuses = {r.point.label: r.status for r in outcome.rows}
    assert statuses['{"batch_size":0}'] == "invalid"
    assert sorted(statuses.values()) == ["invalid", "measured", "measured", "measured"]
    assert [r.point.label for r in outcome.rows] == [p.label for p in outcome.plan.points]  # shuffled order
    measured_order = [
        json.loads(c.data.tags["llem.sweep.point"]) for c in sorted(children, key=lambda c: c.info.start_time)
    ]
    assert [json.dumps(p, separators=(",", ":")) for p in measured_order] == [
        r.point.label for r in outcome.rows if r.status == "measured"
    ]

    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"sweep_summary.csv", "sweep_summary.md"} <= artifacts
    with (tmp_path / "out" / f"sweep-{outcome.plan.sweep_id}" / "sweep_summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and {row["status"] for row in table} == {"measured", "invalid"}
    assert all(row["tok_per_s"] for row in table if row["status"] == "measured")
    speed = {c.info.run_id: c.data.metrics["throughput/output_tokens_per_s"] for c in children}
    best_id, best_label = parent.data.tags["llem.sweep.best.output_tokens_per_s"].split(" ", 1)
    # The fake's windows last microseconds, so two points can tie: the best is one of the fastest.
    assert speed[best_id] == max(speed.values())
    assert best_label == next(c.data.tags["llem.sweep.point"] for c in children if c.info.run_id == best_id)
    assert "llem.sweep.best.ttft_p50_s" in parent.data.tags
    assert "llem.sweep.best.energy_per_output_token_j" not in parent.data.tags  # CPU: no energy

    again = sweep.run_sweep(path, Backends().parts())
    assert again.parent_run_id == outcome.parent_run_id
    assert len(_children(client, outcome.parent_run_id)) == 3  # nothing measured twice
    assert sorted(r.status for r in again.rows) == ["done earlier"] * 3 + ["invalid"]
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"


def test_a_resumed_sweep_measures_only_what_is_missing(tmp_path: Path) -> None:
    path = _file(tmp_path, [{"batch_size": 1}, {"batch_size": 2}])
    first = sweep.run_sweep(path, Backends().parts())
    assert first.parent_run_id is not None
    client = MlflowClient()
    victim = _children(client, first.parent_run_id)[0]
    client.set_terminated(victim.info.run_id, status="FAILED")  # as if that point had crashed

    backends = Backends()
    again = sweep.run_sweep(path, backends.parts())
    assert sorted(r.status for r in again.rows) == ["done earlier", "measured"]
    assert len(backends.built) == 1
    remeasured = next(r for r in again.rows if r.status == "measured")
    assert remeasured.point.label == victim.data.tags["llem.sweep.point"]
    assert len(_children(client, first.parent_run_id)) == 3


def test_a_different_sweep_gets_its_own_parent(tmp_path: Path) -> None:
    a = sweep.run_sweep(_file(tmp_path, {"batch_size": [1]}), Backends().parts())
    b = sweep.run_sweep(_file(tmp_path, {"batch_size": [2]}), Backends().parts())
    assert a.parent_run_id != b.parent_run_id


def test_a_failing_point_is_listed_and_the_sweep_goes_on(tmp_path: Path) -> None:
    class Broken(Backends):
        def make(self, cfg: ExperimentConfig) -> FakeBackend:
            backend = super().make(cfg)
            if cfg.precision == "fp16":
                backend.load = _fail  # type: ignore[method-assign]
            return backend

    outcome = sweep.run_sweep(_file(tmp_path, {"precision": ["fp32", "fp16"]}), Broken().parts())
    status = {r.point.label: (r.status, r.note) for r in outcome.rows}
    assert status['{"precision":"fp32"}'][0] == "measured"
    assert status['{"precision":"fp16"}'] == ("failed", "out of memory")
    assert outcome.failed and MlflowClient().get_run(outcome.parent_run_id).info.status == "FAILED"


def _fail() -> Any:
    from llem_mlflow.errors import BackendError

    raise BackendError("out of memory")


def test_without_mlflow_the_summary_is_written_and_nothing_logged(tmp_path: Path) -> None:
    outcome = sweep.run_sweep(_file(tmp_path, {"batch_size": [1, 2]}, mlflow=False), Backends().parts())
    assert outcome.parent_run_id is None and all(r.run_id is None for r in outcome.rows)
    assert [f.name for f in outcome.summary_files] == ["sweep_summary.csv", "sweep_summary.md"]
    assert "| point | status |" in outcome.summary_files[1].read_text()
    assert MlflowClient().get_experiment_by_name("sweeps") is None
