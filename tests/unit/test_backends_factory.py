"""The backend factory: ``cfg.backend`` -> a ``protocols.Backend``, cheap to import, one entry per backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llem_mlflow import backends, protocols
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import ConfigError
from tests.fakes import FakeBackend


def test_importing_the_factory_loads_no_model_runtime() -> None:
    code = (
        "import sys; import llem_mlflow.backends; "
        "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_protocol_is_re_exported() -> None:
    assert backends.Backend is protocols.Backend


def test_pytorch_builds_the_transformers_backend_from_the_config() -> None:
    pytest.importorskip("torch")
    from llem_mlflow.backends.hf import TransformersBackend

    cfg = ExperimentConfig(model="llem/tiny-llama", weights="random", precision="fp32", device="cpu", seed=7)
    backend = backends.create_backend(cfg)
    assert isinstance(backend, TransformersBackend)
    assert backend.model_name == "llem/tiny-llama" and backend.model is None  # built, not loaded


def test_an_unknown_backend_is_a_config_error_naming_the_known_ones() -> None:
    cfg = ExperimentConfig().model_copy(update={"backend": "vllm"})  # as a config naming a future backend
    with pytest.raises(ConfigError, match=r"backend must be one of pytorch, not 'vllm'"):
        backends.create_backend(cfg)


def test_a_new_backend_is_one_registry_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBackend()
    monkeypatch.setitem(backends.BACKENDS, "fake", lambda cfg: fake)
    assert backends.create_backend(ExperimentConfig().model_copy(update={"backend": "fake"})) is fake
    with pytest.raises(ConfigError, match="one of fake, pytorch,"):
        backends.create_backend(ExperimentConfig().model_copy(update={"backend": "nope"}))


def test_fast_path_options_reach_the_model_and_the_hash(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from llem_mlflow.run.execute import execute

    common = dict(model="llem/tiny-llama", weights="random", device="cpu", n=4, batch_size=2,
                  max_input_tokens=6, max_output_tokens=5, mlflow=False, baseline_s=0.0)  # fmt: skip
    eager = ExperimentConfig(**common, output_dir=str(tmp_path / "a"), attention="eager")  # type: ignore[arg-type]
    static = ExperimentConfig(**common, output_dir=str(tmp_path / "b"), cache="static")  # type: ignore[arg-type]
    a = execute(eager, store_probe=lambda c: None).result
    b = execute(static, store_probe=lambda c: None).result
    assert a.resolved is not None and b.resolved is not None
    assert (a.resolved.attention, a.resolved.cache) == ("eager", "dynamic")
    assert (b.resolved.attention, b.resolved.cache) == ("sdpa", "static")  # auto resolves to sdpa here
    assert a.measurement_config_hash != b.measurement_config_hash
    assert a.output_tokens == b.output_tokens == 4 * 5
