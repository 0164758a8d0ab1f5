"""ExperimentConfig: validation, YAML loading, overrides and the measurement hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.errors import ConfigError


def test_defaults_are_valid_and_frozen() -> None:
    cfg = ExperimentConfig()
    with pytest.raises(Exception, match="frozen"):
        cfg.n = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"precision": "fp8"}, "precision"),
        ({"n": -1}, "n"),
        ({"device": "tpu"}, "device"),
        ({"dataset": "prompts.txt"}, "dataset"),
    ],
)
def test_invalid_values_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, **overrides)
    assert str(info.value).startswith(f"invalid config: {field}:")
    assert "\n" not in str(info.value)


def test_unknown_yaml_key_lists_allowed_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: gpt2\nbatchsize: 4\n")
    with pytest.raises(ConfigError, match=r"batchsize: unknown field; allowed fields are: model, backend"):
        load_config(path)


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: gpt2-medium\nn: 3\n")
    cfg = load_config(path, n=5, seed=None)
    assert (cfg.model, cfg.n, cfg.seed) == ("gpt2-medium", 5, 42)


@pytest.mark.parametrize("text", ["- a\n- b\n", "model: [unclosed\n"])
def test_bad_yaml_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_credentials_in_tracking_uri_never_serialized() -> None:
    cfg = load_config(None, tracking_uri="https://alice:s3cret@mlflow.example/?token=abc")
    assert cfg.tracking_uri == "https://alice:s3cret@mlflow.example/?token=abc"  # still usable to connect
    dumped = cfg.model_dump_json()
    assert "s3cret" not in dumped and "abc" not in dumped and "alice" not in dumped
    assert load_config(cfg, n=2).tracking_uri == cfg.tracking_uri  # overrides keep the live value
