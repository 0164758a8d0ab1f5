"""Issue 19 item 2: the GPU defaults (``config_gpu``) apply on a CUDA device to the fields a user left unset.

The expectations read ``GPU_DEFAULTS`` (its values will be tuned); runs use fake backends whose
``planned_device`` says cuda, and a fake warm-up clock so ``min_window_s`` picks few passes.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from llem_mlflow.backends import runtime
from llem_mlflow.cli import config_cmd
from llem_mlflow.cli.app import app
from llem_mlflow.cli.summary import summary
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.config_gpu import GPU_DEFAULTS, describe, held_gpu_defaults, with_gpu_defaults
from llem_mlflow.measure import rapl, warmup
from llem_mlflow.protocols import CudaDeviceId
from llem_mlflow.results import files as artifacts
from llem_mlflow.run.execute import GpuSet, Outcome, execute, gpu_config
from llem_mlflow.sweep import execute as sweep
from tests.fakes import FakeBackend, FakeDevice

CUDA0 = CudaDeviceId(cuda_index=0, uuid="GPU-fake-0", pci_bus_id=None)
README = Path(__file__).resolve().parents[2] / "README.md"


class GpuFake(FakeBackend):
    """A FakeBackend whose planned device is cuda (as the transformers backend's on a GPU machine)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(device="cuda", cuda_devices=[CUDA0], **kw)

    def planned_device(self) -> str:
        return "cuda"


def _except(*names: str) -> dict[str, object]:
    return {k: v for k, v in GPU_DEFAULTS.items() if k not in names}


@pytest.fixture(autouse=True)
def _slow_batches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each warm-up batch 'takes' 10 s on the fake clock: min_window_s 20 needs at most a few passes."""
    ticks = itertools.count(0.0, 10.0)  # read twice a batch: before and after it
    monkeypatch.setattr(warmup, "TIMER", lambda: float(next(ticks)))
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", tmp_path / "no-powercap")


def _run(tmp_path: Path, backend: FakeBackend | None = None, **kw: object) -> Outcome:
    base: dict[str, object] = dict(
        n=4, batch_size=2, max_input_tokens=4, max_output_tokens=3, baseline_s=0.0, idle_after_s=0.0,
        output_dir=str(tmp_path / "out"), mlflow=False,
    )  # fmt: skip
    counter = itertools.count(0.0, 7.0)
    device = FakeDevice(energy_script=lambda: float(next(counter)), power_w=150.0)
    return execute(
        load_config(None, **{**base, **kw}),
        backend=backend or GpuFake(),
        gpus=lambda ids: GpuSet([device], "580"),
        store_probe=lambda c: None,
    )


# ---------------------------------------------------------------- the rule


def test_unset_fields_take_the_table_on_cuda_and_stay_unset() -> None:
    cfg = load_config(None, n=4)
    new, applied = with_gpu_defaults(cfg, "cuda")
    assert applied == GPU_DEFAULTS
    assert {name: getattr(new, name) for name in GPU_DEFAULTS} == GPU_DEFAULTS
    assert new.model_fields_set == {"n"}  # applied defaults are not the user's
    assert held_gpu_defaults(new) == GPU_DEFAULTS and held_gpu_defaults(cfg) == {}
    assert load_config(new).cycles == ExperimentConfig().cycles  # passed on, they are decided again
    assert with_gpu_defaults(new, "cuda") == (new, applied)  # applying twice changes nothing


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_nothing_on_cpu(device: str) -> None:
    cfg = load_config(None, n=4)
    assert with_gpu_defaults(cfg, device) == (cfg, {})


def test_nothing_for_the_server_scenario() -> None:
    cfg = load_config(None, scenario="server", server_url="http://127.0.0.1:8000")
    assert with_gpu_defaults(cfg, "cuda") == (cfg, {})


def test_a_field_the_user_set_wins_whatever_its_value() -> None:
    cfg = load_config(None, cycles=1, min_window_s=0)  # set to the CPU defaults themselves
    new, applied = with_gpu_defaults(cfg, "cuda")
    assert (new.cycles, new.min_window_s) == (1, 0.0)
    assert applied == _except("cycles", "min_window_s")


def test_a_yaml_key_counts_as_set(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"cycles": 3, "warmup_settle_cv_pct": None}))
    new, applied = with_gpu_defaults(load_config(path), "cuda")
    assert (new.cycles, new.warmup_settle_cv_pct) == (3, None)
    assert applied == _except("cycles", "warmup_settle_cv_pct")


def test_an_existing_config_passes_on_only_its_set_fields() -> None:
    cfg = load_config(ExperimentConfig(cycles=2), n=4)  # run_experiment(ExperimentConfig(...), n=4)
    assert cfg.model_fields_set == {"cycles", "n"}
    assert with_gpu_defaults(cfg, "cuda")[1] == _except("cycles")


def test_device_map_keeps_the_eager_path() -> None:
    new, applied = with_gpu_defaults(load_config(None, device_map="balanced"), "cuda")
    assert (new.cache, new.compile) == ("dynamic", "off")
    assert applied == _except("cache", "compile")


def test_a_dynamic_cache_the_user_asked_for_gets_no_compile() -> None:
    new, applied = with_gpu_defaults(load_config(None, cache="dynamic"), "cuda")
    assert (new.cache, new.compile) == ("dynamic", "off")
    assert applied == _except("cache", "compile")
    assert new.cycles == GPU_DEFAULTS["cycles"]


def test_no_min_window_without_a_warm_up_batch_to_time_it() -> None:
    cfg = load_config({"warmup_batches": 0, "warmup_settle_cv_pct": None})
    new, applied = with_gpu_defaults(cfg, "cuda")
    assert new.min_window_s == 0.0 and "min_window_s" not in applied
    assert applied == _except("min_window_s", "warmup_settle_cv_pct")


def test_the_readme_shows_the_table() -> None:
    text = README.read_text()
    start = text.index("**GPU defaults.**")
    table = text[start : text.index("**Several GPUs.**", start)]
    for name, value in GPU_DEFAULTS.items():
        shown = f"`{value}`" if isinstance(value, str) else f"{value:g}"
        assert f"| `{name}` | {shown} |" in table, name


# ---------------------------------------------------------------- runs


def test_a_gpu_run_records_what_it_took(tmp_path: Path) -> None:
    outcome = _run(tmp_path)
    r = outcome.result
    assert r.gpu_defaults == GPU_DEFAULTS
    assert {name: getattr(r.config, name) for name in GPU_DEFAULTS} == GPU_DEFAULTS  # effective values
    assert r.resolved is not None and (r.resolved.cycles, r.resolved.compile) == (
        GPU_DEFAULTS["cycles"],
        GPU_DEFAULTS["compile"],
    )
    assert r.cycles is not None and r.cycles.n == GPU_DEFAULTS["cycles"]
    assert r.warmup is not None and r.warmup.passes == 1 and r.warmup.settled  # 2 x 10 s batches >= 20 s
    tag = r.mlflow_tags()["llem.gpu_defaults"]
    assert tag.split(",") == [f"{k}={v}" for k, v in GPU_DEFAULTS.items()]
    assert f"GPU defaults    {describe(GPU_DEFAULTS)} (set any of them to override)" in summary(outcome)
    words = describe({"cycles": 3, "compile": "graph", "warmup_settle_cv_pct": 2.0, "min_window_s": 20.0})
    assert words == "cycles 3, compile graph, warm-up settle 2 %, min window 20 s"
    reread = artifacts.read_result_json(Path(outcome.result_dir) / "result.json")
    assert reread.gpu_defaults == GPU_DEFAULTS
    assert with_gpu_defaults(reread.config, "cuda")[1] == {}  # rerunning result.config: all set


def test_an_api_override_wins_in_a_run(tmp_path: Path) -> None:
    r = _run(tmp_path, cycles=2, min_window_s=0).result
    assert (r.config.cycles, r.config.min_window_s) == (2, 0.0)
    assert r.gpu_defaults == _except("cycles", "min_window_s")


def test_a_cpu_run_or_a_backend_without_a_planned_device_takes_nothing(tmp_path: Path) -> None:
    r = _run(tmp_path, backend=FakeBackend(device="cuda", cuda_devices=[CUDA0])).result
    assert r.gpu_defaults is None and r.config.cycles == ExperimentConfig().cycles
    assert "llem.gpu_defaults" not in r.mlflow_tags() and "GPU defaults" not in summary(
        Outcome(result=r, result_dir=tmp_path, run_id=None)
    )
    assert gpu_config(load_config(None, device="cpu")) == load_config(None, device="cpu")


def test_a_sweep_on_a_gpu_gives_every_point_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "resolve_device", lambda requested: "cuda")
    made: list[ExperimentConfig] = []

    def make(cfg: ExperimentConfig) -> FakeBackend:
        made.append(cfg)
        return FakeBackend(device="cuda", cuda_devices=[CUDA0])  # no planned_device: the sweep decides

    counter = itertools.count(0.0, 7.0)
    device = FakeDevice(energy_script=lambda: float(next(counter)), power_w=150.0)
    data = {
        "n": 4, "max_input_tokens": 4, "max_output_tokens": 3, "baseline_s": 0.0, "idle_after_s": 0.0,
        "output_dir": str(tmp_path / "out"), "mlflow": False, "sweep": [{"batch_size": 2}, {"cycles": 2}],
    }  # fmt: skip
    plan = sweep.plan_sweep(data)
    parts = sweep.Parts(
        make_backend=make, store_probe=lambda c: None, gpus=lambda ids: GpuSet([device], "580")
    )
    outcome = sweep.run_sweep(plan, parts)
    assert [r.status for r in outcome.rows] == ["measured", "measured"]
    assert len(made) == 1 and made[0].compile == GPU_DEFAULTS["compile"]  # one load, made GPU-style
    results = {
        r.point.label: json.loads((Path(str(r.result_dir)) / "result.json").read_text()) for r in outcome.rows
    }
    assert results['{"batch_size":2}']["gpu_defaults"] == GPU_DEFAULTS
    assert results['{"cycles":2}']["gpu_defaults"] == _except("cycles")
    assert results['{"cycles":2}']["config"]["cycles"] == 2
    # the points keep their requested configs, so their hashes (resume) do not change on a GPU
    assert {p.config.compile for p in outcome.plan.points if p.config is not None} == {"off"}


def test_config_marks_the_gpu_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planned = config_cmd._Planned("cuda", "cuda", "synthetic")
    monkeypatch.setattr(config_cmd, "_plan", lambda cfg: planned)
    monkeypatch.setattr(runtime, "resolve_precision", lambda requested, device: "bf16")
    wide = {"COLUMNS": "300", "TERMINAL_WIDTH": "300"}
    args = ["config", "--output-dir", str(tmp_path), "--no-mlflow"]
    shown = CliRunner().invoke(app, args, env=wide)
    flagged = CliRunner().invoke(app, [*args, "--cycles", "2"], env=wide)
    assert shown.exit_code == 0 and flagged.exit_code == 0, shown.output + flagged.output
    rows = {
        line.split(None, 1)[0].removeprefix("resolved."): line.split(None, 1)[1]
        for line in shown.stdout.splitlines()
        if line.startswith("resolved.")
    }
    for name, value in GPU_DEFAULTS.items():
        assert rows[name] == f"{value} (GPU default)", name
    assert f"{'resolved.cycles'.ljust(34)}2\n" in flagged.stdout  # a flag is the user's: unmarked
    assert f"{'resolved.compile'.ljust(34)}graph (GPU default)\n" in flagged.stdout


# ---------------------------------------------------------------- a default the model cannot run


class GraphlessGpuFake(GpuFake):
    """A GPU backend whose model the decode loop refuses: its load takes the graph default back."""

    def load(self) -> Any:
        from dataclasses import replace

        loaded = super().load()
        why = "compile: graph (a GPU default) cannot run FakeModel (...); measured with generate() instead"
        return replace(loaded, settled={"cache": "dynamic", "compile": "off"}, warnings=[why])


def test_a_graph_default_the_model_cannot_run_falls_back_to_eager(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from llem_mlflow.backends import fastpath

    refused = SimpleNamespace(config=SimpleNamespace(is_encoder_decoder=True))  # the loop refuses it
    default = fastpath.FastPath.of(with_gpu_defaults(load_config(None), "cuda")[0])
    assert default.graph and default.fallback
    path, changed, why = fastpath.settle_path(refused, default)
    assert (path.cache, path.compile, changed) == ("dynamic", "off", {"cache": "dynamic", "compile": "off"})
    assert len(why) == 1 and "GPU default" in why[0] and "compile: off" in why[0]
    asked = fastpath.FastPath.of(load_config(None, cache="static", compile="graph"))  # the user's own graph
    assert not asked.fallback and fastpath.settle_path(refused, asked) == (asked, {}, [])

    r = _run(tmp_path, backend=GraphlessGpuFake()).result
    assert (r.config.cache, r.config.compile) == ("dynamic", "off")  # what was measured, not the default
    assert r.resolved is not None and (r.resolved.cache, r.resolved.compile) == ("dynamic", "off")
    assert r.gpu_defaults == _except("cache", "compile")
    assert any("cannot run FakeModel" in w for w in r.warnings)
