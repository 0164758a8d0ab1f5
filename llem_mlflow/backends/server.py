"""``ServerBackend``: ``protocols.Backend`` for the server scenario.

What an in-process run asks of a backend, answered for a model that another process serves: the model's
config and tokenizer come from transformers' loaders as for ``hf`` (the checks, the synthetic prompts and
their text need them; no weight is loaded here); ``load()`` launches the server from ``server_command``
(or attaches to ``server_url``) and returns when it answers, its time to health as the load time;
``release()`` stops a launched server (always: also on failure and Ctrl-C, never an orphan). The
requests themselves go through ``serving.driver.ServerLoad``; ``generate()`` is never called.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llem_mlflow.backends.hub import find_config
from llem_mlflow.backends.shape import config_facts, config_shape
from llem_mlflow.backends.tokenizing import TokenizerChoice
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import BackendError
from llem_mlflow.protocols import BatchStats, CudaDeviceId, LoadedModel, ModelFacts, ModelShape
from llem_mlflow.secrets import scrub_secrets
from llem_mlflow.served import ServerInfo
from llem_mlflow.serving import process

log = logging.getLogger(__name__)

#: Lists the CUDA devices a server uses: ``server_gpus`` (None: every visible one) -> devices.
GpuLister = Callable[[str | None], list[CudaDeviceId]]
#: The GPU-less shape of a model whose family the FLOPs estimate does not know.
UNKNOWN_SHAPE_NOTE = "the served model's family is unknown to the FLOPs estimate: FLOPs are not reported"


class ServerBackend:
    """The model's config and tokenizer here; the model itself in a server (launched or attached)."""

    def __init__(self, cfg: ExperimentConfig, gpus: GpuLister, log_dir: Path) -> None:
        self._cfg = cfg
        self._gpus = gpus
        self._log_dir = log_dir
        self._config: tuple[Any, str] | None = None
        self._tokens = TokenizerChoice(
            cfg.model, "auto", cfg.trust_remote_code, lambda: self.inspect().vocab_size
        )
        self.server: process.LaunchedServer | None = None
        self.command: list[str] | None = None  # the launch command as run
        self.info: ServerInfo | None = None
        self.shape_known = True

    # -- what is known before the server runs

    def _model_config(self) -> tuple[Any, str]:
        if self._config is None:
            self._config = find_config(self._cfg.model, self._cfg.trust_remote_code)
        return self._config

    def inspect(self) -> ModelFacts:
        """Vocabulary and context length from the model's config (local folder, shipped, HF cache, hub)."""
        config, source = self._model_config()
        return config_facts(config, source)

    def tokenizer_name(self) -> str:
        """The tokenizer that builds the prompts' text."""
        return self._tokens.get().name

    def tokenize(self, prompts: list[str], max_input_tokens: int) -> list[list[int]]:
        """Token ids of text prompts, truncated (the context checks count them)."""
        return self._tokens.tokenize(prompts, max_input_tokens)

    def decode(self, ids: list[int]) -> str:
        """The text of prompt ``ids``: what the server is sent (it tokenizes again; usage counts)."""
        return self._tokens.get().decode(ids)

    # -- the server

    def load(self) -> LoadedModel:
        """Launch (``server_command``) or attach to (``server_url``) the server; return once it answers."""
        t0 = time.perf_counter()
        models = self._launch() if self._cfg.server_command else self._attach()
        load_s = time.perf_counter() - t0
        owner = process.models_owner(models)
        command = self.command
        url = self._url()
        self.info = ServerInfo(
            url=url,
            engine=process.engine_of(command, owner),
            served_model=process.served_model_name(models, self._cfg.model),
            launched=self.server is not None,
            command=scrub_secrets(" ".join(command)) if command else None,
            engine_version=_engine_version(url),
            pid=self.server.pid if self.server is not None else None,
        )
        devices = self._gpus(self._cfg.server_gpus)
        shape = self._shape()
        notes = [*self._tokens.warnings] + ([] if self.shape_known else [UNKNOWN_SHAPE_NOTE])
        if self.info.served_model != self._cfg.model:
            notes.append(
                f"the server serves {self.info.served_model!r}, the config names {self._cfg.model!r}: the "
                "prompts' text, the context check and the FLOPs come from the config's model; give the "
                "served model's name or folder as model"
            )
        return LoadedModel(
            weights="pretrained",
            precision=self._cfg.precision if self._cfg.precision != "auto" else "unknown",
            device="cuda" if devices else "cpu",
            load_time_s=load_s,
            shape=shape,
            cuda_devices=devices,
            warnings=notes,
        )

    def _url(self) -> str:
        return self.server.url if self.server is not None else str(self._cfg.server_url)

    def _launch(self) -> dict[str, Any]:
        port = process.free_port()
        command = self.command = process.render_command(
            str(self._cfg.server_command), model=self._cfg.model, port=port
        )
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"server-{time.strftime('%Y%m%dT%H%M%S')}-{port}.log"
        log.info("launching the server: %s (log: %s)", scrub_secrets(" ".join(command)), log_path)
        self.server = process.launch(
            command,
            url=f"http://127.0.0.1:{port}",
            log_path=log_path,
            start_timeout_s=self._cfg.server_start_timeout_s,
        )
        return process.attach(self.server.url)

    def _attach(self) -> dict[str, Any]:
        return process.attach(str(self._cfg.server_url))

    def _shape(self) -> ModelShape:
        shape = config_shape(self._model_config()[0])
        if shape is not None:
            return shape
        self.shape_known = False
        return ModelShape(0, 0, 0, 0, self.inspect().vocab_size)

    def generate(self, batch: list[list[int]], max_output_tokens: int) -> BatchStats:
        """Not used: the server scenario sends requests (``serving.driver.ServerLoad``)."""
        raise BackendError("the server scenario sends requests to the server; generate() is not used")

    def warmup_groups(self, cfg: ExperimentConfig, groups: list[list[list[int]]]) -> list[list[list[int]]]:
        """Nothing compiles here (the server warms up through requests)."""
        return []

    def synchronize(self) -> None:
        """Nothing to synchronize: the work runs in the server's process."""

    def versions(self) -> dict[str, str | None]:
        """The engine and its version (as the server or its command say), beside this process's torch."""
        from llem_mlflow.backends.runtime import backend_versions

        info = self.info
        return {
            **backend_versions(),
            "engine": info.engine if info else None,
            "engine_version": info.engine_version if info else None,
        }

    def died(self) -> str | None:
        """None while a launched server runs (or the server is attached), else how it ended."""
        server = self.server
        if server is None or server.alive():
            return None
        return (
            f"the server exited with code {server.returncode}: {server.log_tail()} (log: {server.log_path})"
        )

    @property
    def log_path(self) -> Path | None:
        """The launched server's log file (None when attached)."""
        return self.server.log_path if self.server is not None else None

    def release(self) -> None:
        """Stop a launched server (process group: SIGTERM, then SIGKILL); an attached one is left running."""
        if self.server is not None:
            self.server.stop()


def _engine_version(url: str) -> str | None:
    """The server's own version where it tells it (vLLM and SGLang: ``GET /version``); else None."""
    import json
    import urllib.request

    root = url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(f"{root}/version", timeout=2.0) as response:  # noqa: S310 - http(s) only
            version = json.loads(response.read(4096)).get("version")
    except (OSError, ValueError, AttributeError):
        return None
    return str(version)[:100] if version else None
