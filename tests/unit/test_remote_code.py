"""trust_remote_code: off unless asked for, passed to every transformers loader, and a clear refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import transformers
from typer.testing import CliRunner

from llem_mlflow.backends.hf import TransformersBackend
from llem_mlflow.cli.app import app
from llem_mlflow.config import ExperimentConfig

SHIPPED = Path(__file__).resolve().parents[2] / "llem_mlflow" / "models" / "llem--tiny-gpt2.json"


def _folder(tmp_path: Path, **extra: Any) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**json.loads(SHIPPED.read_text()), **extra}))
    return folder


def _spy(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
    """Record the trust_remote_code each call of ``owner.name`` receives (the call still happens)."""
    seen: list[Any] = []
    original = getattr(owner, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("trust_remote_code", "not passed"))
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return seen


@pytest.mark.parametrize("asked", [False, True])
def test_every_loader_gets_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, asked: bool) -> None:
    configs = _spy(monkeypatch, transformers.AutoConfig, "from_pretrained")
    models = _spy(monkeypatch, transformers.AutoModelForCausalLM, "from_config")
    backend = TransformersBackend(
        str(_folder(tmp_path)), weights="random", device="cpu", trust_remote_code=asked
    )
    backend.inspect()
    backend.load()
    assert configs == [asked] and models == [asked]


def test_it_is_off_unless_asked() -> None:
    assert ExperimentConfig().trust_remote_code is False
    assert ExperimentConfig(trust_remote_code=True).trust_remote_code is True


def test_a_model_with_its_own_code_is_refused_with_the_option_to_name(tmp_path: Path) -> None:
    folder = _folder(tmp_path, model_type="x-custom", auto_map={"AutoConfig": "configuration_x.XConfig"})
    args = ["run", "--model", str(folder), "--weights", "random", "--n", "2", "--no-mlflow"]
    result = CliRunner().invoke(app, [*args, "--output-dir", str(tmp_path / "out")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--trust-remote-code" in result.output and "ships its own Python code" in result.output
