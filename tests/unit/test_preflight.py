"""Every check runs before the model loads: a bad input exits fast with one line, never after GPU work."""

from __future__ import annotations

from pathlib import Path

import pytest

from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import ConfigError
from llem_mlflow.runner import execute
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
