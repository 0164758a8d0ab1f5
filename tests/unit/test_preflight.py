"""Every check runs before the model loads: a bad input exits fast with one line, never after GPU work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import ConfigError
from llem_mlflow.run.execute import execute
from tests.fakes import FakeBackend


def _cfg(tmp_path: Path, **kw: object) -> ExperimentConfig:
    base: dict[str, object] = dict(
        n=4,
        batch_size=2,
        max_input_tokens=6,
        max_output_tokens=4,
        output_dir=str(tmp_path / "out"),
        mlflow=False,
        baseline_s=0.0,
    )
    return ExperimentConfig.model_validate({**base, **kw})


def _fails_before_load(cfg: ExperimentConfig, backend: FakeBackend, match: str) -> ConfigError:
    with pytest.raises(ConfigError, match=match) as info:
        execute(cfg, backend=backend, store_probe=lambda c: None)
    assert backend.load_calls == 0 and backend.generate_calls == []
    assert "\n" not in str(info.value)
    return info.value


def test_unwritable_output_dir_fails_before_load(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    err = _fails_before_load(_cfg(tmp_path, output_dir=str(blocker / "sub")), FakeBackend(), "output_dir")
    assert "--output-dir" in str(err)


def test_missing_dataset_fails_before_load(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, dataset=str(tmp_path / "missing.jsonl"))
    _fails_before_load(cfg, FakeBackend(), "dataset")


def test_context_overflow_fails_before_load_with_the_numbers(tmp_path: Path) -> None:
    backend = FakeBackend(context_length=8)
    err = _fails_before_load(_cfg(tmp_path, max_input_tokens=6, max_output_tokens=4), backend, "context")
    assert "6" in str(err) and "4" in str(err) and "(8)" in str(err)


def test_context_check_uses_the_longest_real_prompt(tmp_path: Path) -> None:
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "a b"}\n{"prompt": "a b c"}\n')
    cfg = _cfg(tmp_path, dataset=str(data), n=2, max_input_tokens=50, max_output_tokens=5)
    assert execute(cfg, backend=FakeBackend(context_length=8), store_probe=lambda c: None).result
    _fails_before_load(
        _cfg(tmp_path, dataset=str(data), n=2, max_input_tokens=50, max_output_tokens=6),
        FakeBackend(context_length=8),
        "3 tokens",
    )


def test_nothing_is_written_when_a_check_fails(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = _cfg(tmp_path, dataset=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError):
        execute(cfg, backend=FakeBackend(), store_probe=lambda c: None)
    assert list(out.iterdir()) == []  # the write check leaves nothing behind


def test_unreachable_store_warns_up_front_and_the_run_keeps_its_files(tmp_path: Path) -> None:
    seen: list[str] = []
    cfg = _cfg(tmp_path, mlflow=True, tracking_uri="http://127.0.0.1:9")
    outcome = execute(cfg, backend=FakeBackend(), store_probe=lambda c: seen.append("probe") or "store down")
    assert seen == ["probe", "probe"]  # up front, and once more before logging
    assert outcome.run_id is None and outcome.tracking_error is not None
    assert "store down" in outcome.tracking_error
    assert f"The result is saved in {outcome.result_dir} and spooled" in outcome.tracking_error
    assert (outcome.result_dir / "result.json").is_file()
    assert any("store down" in w for w in outcome.result.warnings)


def test_a_probe_that_hangs_or_raises_never_blocks_the_run(tmp_path: Path) -> None:
    def boom(cfg: ExperimentConfig) -> str | None:
        raise RuntimeError("probe bug")

    outcome = execute(_cfg(tmp_path, mlflow=True), backend=FakeBackend(), store_probe=boom)
    assert outcome.tracking_error is not None and "probe bug" in outcome.tracking_error


# ---------------------------------------------------------------- inputs that are not what they seem


def test_a_dataset_that_is_a_directory_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "prompts.jsonl"
    folder.mkdir()
    err = _fails_before_load(_cfg(tmp_path, dataset=str(folder)), FakeBackend(), "dataset")
    assert "is a directory, not a regular file" in str(err)  # was: "file not found"


def test_a_dataset_that_is_a_fifo_says_so_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "prompts.jsonl"
    os.mkfifo(fifo)  # opening it would wait for a writer for ever
    err = _fails_before_load(_cfg(tmp_path, dataset=str(fifo)), FakeBackend(), "dataset")
    assert "is a FIFO, not a regular file" in str(err)  # was: "file not found"


def test_a_link_to_a_dataset_file_is_read(tmp_path: Path) -> None:
    data = tmp_path / "real.jsonl"
    data.write_text('{"prompt": "a"}\n' * 4)
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    assert execute(
        _cfg(tmp_path, dataset=str(link)), backend=FakeBackend(), store_probe=lambda c: None
    ).result


@pytest.mark.parametrize(
    "uri", ["fooscheme://x", "postgres://u@h/db"]
)  # MLflow knows postgresql, not postgres
def test_a_tracking_uri_no_mlflow_store_handles_is_refused_before_loading(tmp_path: Path, uri: str) -> None:
    """Was: accepted; the model loaded and measured, then logging failed and the result was spooled."""
    scheme = uri.split(":")[0]
    err = _fails_before_load(_cfg(tmp_path, mlflow=True, tracking_uri=uri), FakeBackend(), "tracking_uri")
    assert f"scheme {scheme!r}" in str(err) and "sqlite" in str(err)  # the known schemes are listed
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_an_unknown_scheme_from_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "fooscheme://x")
    _fails_before_load(_cfg(tmp_path, mlflow=True), FakeBackend(), "MLFLOW_TRACKING_URI")


def test_no_scheme_check_without_mlflow(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, mlflow=False, tracking_uri="fooscheme://x")  # files only: the URI is never used
    assert execute(cfg, backend=FakeBackend(), store_probe=lambda c: None).result


def test_a_scheme_a_plugin_registers_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer comes from MLflow's own store registry (entry-point plugins register there)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry as registry

    from llem_mlflow.tracking import client as tracking

    assert tracking.unknown_scheme("myplugin://store") is not None
    monkeypatch.setitem(registry._registry, "myplugin", lambda store_uri, artifact_uri=None: None)
    assert tracking.unknown_scheme("myplugin://store") is None


def test_an_experiment_name_from_the_environment_is_held_to_the_same_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: accepted; MLflow refused the name only when logging, after the measurement."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "x" * 600)
    err = _fails_before_load(_cfg(tmp_path, mlflow=True), FakeBackend(), "MLFLOW_EXPERIMENT_NAME")
    assert "256" in str(err)
