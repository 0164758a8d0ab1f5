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


# ---------------------------------------------------------------- every input bounded (issue 17, point 7)

ROOT = Path(__file__).resolve().parents[2]


def _numbers() -> list[str]:
    return [
        n
        for n, f in ExperimentConfig.model_fields.items()
        if "float" in str(f.annotation) or f.annotation is int
    ]


def test_every_number_has_a_lower_and_an_upper_bound() -> None:
    """A run always ends: no numeric field is open-ended (was: batch_size, warmup_batches, warmup_max_batches,
    warmup_settle_cv_pct, carbon_intensity_g_per_kwh and pue had no upper bound)."""
    import annotated_types

    unbounded = []
    for name in _numbers():
        kinds = {type(m) for m in ExperimentConfig.model_fields[name].metadata}
        if not kinds & {annotated_types.Ge, annotated_types.Gt} or annotated_types.Le not in kinds:
            unbounded.append(name)
    assert unbounded == []


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("batch_size", 1_000_001, "1000000"),  # was: accepted
        ("warmup_batches", 1001, "1000"),  # was: accepted; 10**9 warm-up calls never end
        ("warmup_max_batches", 1001, "1000"),  # was: accepted
        ("warmup_settle_cv_pct", 101.0, "100"),  # was: accepted
        ("sampling_interval_s", 1e-4, "0.001"),  # was: accepted (gt 0); 1e-300 spins a core
        ("carbon_intensity_g_per_kwh", 2001.0, "2000"),  # was: accepted
        ("pue", 5.5, "5"),  # was: accepted
    ],
)
def test_a_number_past_its_bound_names_the_field_and_the_bound(field: str, value: float, limit: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, **{field: value})
    message = str(info.value)
    assert message.startswith(f"invalid config: {field}:") and limit in message and "\n" not in message


NAME_MAX, PATH_MAX = 255, 4096  # Linux: bytes of one file name; of a path, its NUL included


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("run_name", "r" * 251, "250"),  # MLflow's SQL stores: runs.name is 250 characters
        ("experiment_name", "e" * 257, "256"),  # experiments.name: 256 characters
        ("experiment_name", "two\nlines", "control character"),
        ("run_name", "tab\there", "control character"),
        ("run_name", "nul\x00", "NUL"),
        ("model", "org/m\x00", "NUL"),
        ("prompt_field", "p\x00", "NUL"),
        ("prompt_field", "p" * 257, "256"),
        ("output_dir", "out/" + "d" * (NAME_MAX + 1), "255"),
        ("output_dir", "é" * (NAME_MAX // 2 + 1), "255"),  # 256 bytes in 128 characters
        ("output_dir", "/".join(["d" * 200] * 20), "3,585"),  # room left for <experiment_id>/<file>
        ("dataset", "/".join(["d" * 200] * 21) + ".jsonl", "4,095"),
        ("model", "m" * (NAME_MAX + 1), "255"),
        ("tracking_uri", "http://h/" + "x" * 4096, "4,096"),
        ("tracking_uri", "http://h/\n", "control character"),
        ("run_name", "\udcff", "UTF-8"),  # an argv byte that is not UTF-8 (surrogateescape)
    ],
)
def test_a_name_mlflow_or_the_filesystem_would_reject_is_refused_naming_the_limit(
    field: str, value: str, words: str
) -> None:
    """Was: every one accepted, then refused by MLflow or the filesystem after the measurement."""
    with pytest.raises(ConfigError) as info:
        load_config(None, **{field: value})
    message = str(info.value)
    assert message.startswith(f"invalid config: {field}:"), message
    assert words in message and "\n" not in message
    assert len(message) < 400  # the value itself is never echoed at length


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_name", "r" * 250),
        ("experiment_name", "e" * 256),
        ("experiment_name", "énergie · 能量"),
        ("output_dir", "out/" + "d" * NAME_MAX),
        ("output_dir", "a b/\nnewline is a legal file name"),
        ("model", "org/" + "m" * 96),
        ("tracking_uri", "postgresql://u@h:5432/db"),
    ],
)
def test_the_largest_and_odd_but_valid_names_pass(field: str, value: str) -> None:
    assert getattr(load_config(None, **{field: value}), field) == value


def _readme_table() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Configuration") : text.index("### What the hash names")]


def test_limits_are_stated_in_the_description_the_help_and_the_readme() -> None:
    """One source: a bounded field's limit in words is in its description, ``run -h`` and README."""
    from typer.testing import CliRunner

    from llem_mlflow.cli.app import app
    from llem_mlflow.config import limits

    help_text = CliRunner().invoke(app, ["run", "-h"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"}).output
    rows = [line for line in _readme_table().splitlines() if line.startswith("| `")]
    bounded = {name: limits(name) for name in ExperimentConfig.model_fields if limits(name)}
    assert {"n", "batch_size", "pue", "run_name", "experiment_name", "output_dir"} <= set(bounded)
    for name, text in bounded.items():
        assert text in (ExperimentConfig.model_fields[name].description or ""), name
        assert f"Allowed: {text}." in help_text, name
        row = next(r for r in rows if f"`{name}`" in r.split(" | ")[0])
        assert text in row, (name, text, row)
