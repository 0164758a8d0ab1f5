"""Checks that run before any weight is loaded, so a bad input never costs a GPU run.

In order: the output folder is writable; the MLflow store answers within a few seconds
(checked in a background thread while the rest runs; an unreachable store is a warning, not an
error: the run still writes its files); the dataset parses; the model's config gives a
vocabulary and a context length; synthetic prompts fit the context and a sane size before they
are built; text prompts tokenize; the longest prompt plus the new tokens fit the model's context.
Each failure is one ``ConfigError`` (the user must change the config: exit 2) or another
``LlemError`` (the environment is at fault: exit 1) naming what to fix.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llem_mlflow import identity, workload
from llem_mlflow.config import ExperimentConfig
from llem_mlflow.errors import ConfigError
from llem_mlflow.protocols import Backend, ModelFacts
from llem_mlflow.store_probe import PROBE_TIMEOUT_S

#: Answers None when the tracking store is reachable, else one line saying why not.
StoreProbe = Callable[[ExperimentConfig], "str | None"]
STORE_PROBE_TIMEOUT_S = PROBE_TIMEOUT_S  # the probe's own bound; the thread gets 1 s more
#: Synthetic prompt tokens (n x max_input_tokens) built in memory at most: ~1.2 GB of Python ints.
MAX_SYNTHETIC_TOKENS = 2**25


@dataclass(frozen=True)
class Plan:
    """What the checks established: the prompts as token ids and how they were made."""

    prompts: list[list[int]]
    facts: ModelFacts
    dataset: str  # "synthetic" or identity.dataset_digest of the file
    tokenizer: str | None  # None for synthetic prompts
    metadata_lines: int = 0
    warnings: list[str] = field(default_factory=list)
    store_warning: str | None = None  # set when the MLflow store did not answer


def check(cfg: ExperimentConfig, backend: Backend, probe: StoreProbe | None = None) -> Plan:
    """Run every check; return the prepared prompts or raise the first failure.

    Raises:
        ConfigError: the output folder, dataset or context does not fit the config.
        LlemError: the model's config or tokenizer cannot be had.
    """
    check_output_dir(Path(cfg.output_dir))
    texts = check_dataset(cfg)  # cheap file checks before anything imports torch
    store = _StoreCheck(cfg, probe) if cfg.mlflow and probe is not None else None
    facts = backend.inspect()  # on a failure the probe thread is abandoned, not waited for
    plan = _prompts(cfg, backend, facts, texts)
    check_context(cfg, facts, plan.prompts)
    reason = store.result() if store is not None else None
    store_warning = (
        f"{reason}; measuring anyway, the result files are kept for `llem-mlflow log`" if reason else None
    )
    warnings = [*plan.warnings, *([store_warning] if store_warning else [])]
    return Plan(
        prompts=plan.prompts,
        facts=facts,
        dataset=plan.dataset,
        tokenizer=plan.tokenizer,
        metadata_lines=plan.metadata_lines,
        warnings=warnings,
        store_warning=store_warning,
    )


def check_output_dir(output_dir: Path) -> None:
    """Create ``output_dir`` if needed and prove a file can be written there (then remove it).

    Raises:
        ConfigError: the folder cannot be created or written.
    """
    probe = output_dir / f".llem-write-check-{uuid.uuid4().hex[:8]}"
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte or an unencodable character
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"output_dir: cannot write results to {output_dir} ({reason}); "
            "choose a writable folder with --output-dir"
        ) from None


def check_context(cfg: ExperimentConfig, facts: ModelFacts, prompts: list[list[int]]) -> None:
    """The longest prompt plus ``max_output_tokens`` must fit the model's context length.

    Raises:
        ConfigError: it does not fit (the message gives the numbers and what to lower).
    """
    if facts.context_length is None or not prompts:
        return
    _check_fits(cfg, facts, max(len(p) for p in prompts))


def _check_fits(cfg: ExperimentConfig, facts: ModelFacts, longest: int) -> None:
    if facts.context_length is None:
        return
    needed = longest + cfg.max_output_tokens
    if needed > facts.context_length:
        raise ConfigError(
            f"max_output_tokens: the longest prompt ({longest} tokens) + max_output_tokens "
            f"({cfg.max_output_tokens}) = {needed} positions exceed the context of {cfg.model!r} "
            f"({facts.context_length}); lower max_input_tokens or max_output_tokens"
        )


def check_synthetic_size(cfg: ExperimentConfig, facts: ModelFacts) -> None:
    """Synthetic prompts (all ``max_input_tokens`` long) fit the context and are few enough to build.

    Raises:
        ConfigError: naming max_output_tokens (context) or n (n x max_input_tokens too large).
    """
    _check_fits(cfg, facts, cfg.max_input_tokens)
    tokens = cfg.n * cfg.max_input_tokens
    if tokens > MAX_SYNTHETIC_TOKENS:
        raise ConfigError(
            f"n: {cfg.n} synthetic prompts x max_input_tokens {cfg.max_input_tokens} = {tokens:,} prompt "
            f"tokens, more than the {MAX_SYNTHETIC_TOKENS:,} that can be built; lower n or max_input_tokens"
        )


def check_dataset(cfg: ExperimentConfig) -> workload.PromptFile | None:
    """The dataset file's prompts (None for synthetic prompts); no model, no torch needed.

    Raises:
        ConfigError: the file is missing, unreadable, not UTF-8 or holds no usable prompt.
    """
    return None if cfg.dataset == identity.SYNTHETIC else _read_dataset(cfg)


def _read_dataset(cfg: ExperimentConfig) -> workload.PromptFile:
    """The dataset's prompts; a file that is not UTF-8 or holds absurdly nested JSON is a ConfigError."""
    path = Path(cfg.dataset)
    try:
        return workload.read_jsonl_prompts(path, cfg.n, field=cfg.prompt_field)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"dataset: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise ConfigError(f"dataset: {path} holds JSON nested too deeply to be a prompt") from None
    except OSError as exc:
        raise ConfigError(f"dataset: {path} cannot be read ({exc.strerror or exc})") from None


def _prompts(
    cfg: ExperimentConfig, backend: Backend, facts: ModelFacts, read: workload.PromptFile | None
) -> Plan:
    if read is None:
        check_synthetic_size(cfg, facts)  # before building them: they can be too many to build
        prompts = workload.synthetic_prompts(facts.vocab_size, cfg.n, cfg.max_input_tokens, cfg.seed)
        return Plan(prompts=prompts, facts=facts, dataset=identity.SYNTHETIC, tokenizer=None)
    path = Path(cfg.dataset)
    prompts = backend.tokenize(read.prompts, cfg.max_input_tokens)
    warnings = []
    if read.metadata_lines:
        warnings.append(f"dataset: skipped {read.metadata_lines} metadata line(s) in {path}")
    return Plan(
        prompts=prompts,
        facts=facts,
        dataset=identity.dataset_digest(path),
        tokenizer=backend.tokenizer_name(),
        metadata_lines=read.metadata_lines,
        warnings=warnings,
    )


def probe_now(cfg: ExperimentConfig, probe: StoreProbe) -> str | None:
    """Probe the store once more (bounded by the same timeout); None when it answers."""
    return _StoreCheck(cfg, probe).result()


class _StoreCheck:
    """Probe the tracking store in a daemon thread; ``result()`` waits at most the timeout."""

    def __init__(self, cfg: ExperimentConfig, probe: StoreProbe) -> None:
        self._answer: list[str | None] = []
        self._thread = threading.Thread(target=self._run, args=(cfg, probe), daemon=True)
        self._thread.start()

    def _run(self, cfg: ExperimentConfig, probe: StoreProbe) -> None:
        try:
            self._answer.append(probe(cfg))
        except Exception as exc:  # a probe must never break the run; its failure is the answer
            self._answer.append(f"the MLflow store could not be checked: {exc}")

    def result(self) -> str | None:
        self._thread.join(STORE_PROBE_TIMEOUT_S + 1.0)
        if not self._answer:
            return f"the MLflow store did not answer within {STORE_PROBE_TIMEOUT_S:g} s"
        return self._answer[0]
