"""Checks that run before any weight is loaded, so a bad input never costs a GPU run.

In order: the tracking URI's scheme is one an installed MLflow handles (``fooscheme://`` is an
error) and an experiment name from the environment fits MLflow; the output folder is writable and
its file system has room for the run's files (free bytes against ``space_needed``); the
dataset is a regular file (not a folder or a FIFO) and parses; the MLflow store answers within a
few seconds (checked in a background thread while the rest runs; an unreachable store is a warning,
not an error: the run still writes its files); the model's config gives a
vocabulary and a context length; synthetic prompts fit the context and a sane size before they
are built; text prompts tokenize; the longest prompt plus the new tokens fit the model's context.
Each failure is one ``ConfigError`` (the user must change the config: exit 2) or another
``LlemError`` (the environment is at fault: exit 1) naming what to fix.
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llem_mlflow.config import TEXT_LIMITS, ExperimentConfig
from llem_mlflow.errors import ConfigError
from llem_mlflow.measure import workload
from llem_mlflow.measure.device import cuda_visible_entries
from llem_mlflow.protocols import Backend, ModelFacts
from llem_mlflow.results import identity
from llem_mlflow.tracking.store_probe import PROBE_TIMEOUT_S
from llem_mlflow.tracking.uris import target_tracking_uri, unknown_scheme

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
    if cfg.mlflow:
        check_tracking(cfg)  # first: a refused URI leaves no folder behind
    check_output_dir(Path(cfg.output_dir))
    space_warning = check_free_space(cfg)
    texts = check_dataset(cfg)  # cheap file checks before anything imports torch
    store = _StoreCheck(cfg, probe) if cfg.mlflow and probe is not None else None
    facts = backend.inspect()  # on a failure the probe thread is abandoned, not waited for
    plan = _prompts(cfg, backend, facts, texts)
    check_context(cfg, facts, plan.prompts)
    reason = store.result() if store is not None else None
    store_warning = (
        f"{reason}; measuring anyway, the result files are kept for `llem-mlflow log`" if reason else None
    )
    warnings = [*plan.warnings, *(w for w in (space_warning, store_warning) if w)]
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


#: result.json, power.png and mlflow_run.json together, at most (a result.json of many cycles: ~100 KB).
RESULT_FILES_B = 1 << 20
#: Parquet bytes per trace sample and GPU, rounded up (measured: 14-20 B with a slow reading every 10th).
TRACE_SAMPLE_B = 40
#: The fastest decode step the estimate assumes: a run takes at least this long per generation step.
MIN_STEP_S = 0.005
#: Free space below this many times the estimate is a warning (a run often takes longer than its floor).
SPACE_MARGIN = 4


@dataclass(frozen=True)
class SpaceNeed:
    """What a run will write at least: ``bytes`` in all, a trace of ``samples`` over ``gpus`` GPU(s)
    for a run of at least ``run_s`` seconds."""

    bytes: int
    samples: int
    gpus: int
    run_s: float

    def __str__(self) -> str:
        return (
            f"about {_mb(self.bytes)} (result.json and power.png up to {_mb(RESULT_FILES_B)}, a power trace "
            f"of ~{self.samples:,} samples x {self.gpus} GPU(s) x {TRACE_SAMPLE_B} B for a run of at least "
            f"{self.run_s:,.0f} s)"
        )


def space_needed(cfg: ExperimentConfig) -> SpaceNeed:
    """The least a run of ``cfg`` writes: result files, and a trace of one sample per GPU every
    ``sampling_interval_s`` over the idle windows, cool-downs and every generation step at ``MIN_STEP_S``."""
    batches = -(-cfg.n // cfg.batch_size)
    steps = (cfg.warmup_batches + cfg.cycles * batches) * cfg.max_output_tokens
    run_s = 2 * cfg.baseline_s + cfg.cycles * cfg.cooldown_s + steps * MIN_STEP_S
    gpus = _gpus_guess(cfg)
    samples = int(run_s / cfg.sampling_interval_s)
    return SpaceNeed(RESULT_FILES_B + samples * gpus * TRACE_SAMPLE_B, samples, gpus, run_s)


def _gpus_guess(cfg: ExperimentConfig) -> int:
    """1, or with a ``device_map`` every GPU ``CUDA_VISIBLE_DEVICES`` names (the model is not loaded yet)."""
    visible = cuda_visible_entries(os.environ.get("CUDA_VISIBLE_DEVICES")) or []
    return max(1, len(visible)) if cfg.device_map is not None and cfg.device != "cpu" else 1


def check_free_space(cfg: ExperimentConfig) -> str | None:
    """Refuse a run whose files clearly cannot fit the output folder's file system; warn when it is tight.

    The rule: free bytes (``shutil.disk_usage``, what an unprivileged process may use) below
    ``space_needed`` refuse the run; below ``SPACE_MARGIN`` times it, a warning (returned). An empty
    probe file proves nothing about room for a trace: the free bytes are what is checked.

    Raises:
        ConfigError: naming output_dir, the free space and what a run needs.
    """
    folder = Path(cfg.output_dir)
    try:
        free_b = shutil.disk_usage(folder).free
    except OSError:
        return None  # check_output_dir already proved the folder exists; a file system without statvfs
    need = space_needed(cfg)
    if free_b < need.bytes:
        raise ConfigError(
            f"output_dir: only {_mb(free_b)} free on the file system of {folder}; a run needs {need}. "
            "Free some space or choose another folder with --output-dir"
        )
    if free_b < SPACE_MARGIN * need.bytes:
        return (
            f"output_dir: {_mb(free_b)} free on the file system of {folder}, a run needs {need}; a longer "
            "run may not fit (its files then go to the temp folder or MLflow, see the last line)"
        )
    return None


def _mb(size_b: float) -> str:
    return f"{size_b / 1e6:,.1f} MB"


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
    _regular_file(path)  # opening a FIFO would block until a writer came
    try:
        return workload.read_jsonl_prompts(path, cfg.n, field=cfg.prompt_field)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"dataset: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise ConfigError(f"dataset: {path} holds JSON nested too deeply to be a prompt") from None
    except OSError as exc:
        raise ConfigError(f"dataset: {path} cannot be read ({exc.strerror or exc})") from None


def _regular_file(path: Path) -> None:
    """``path`` is a regular file (or a link to one).

    Raises:
        ConfigError: it is missing, a directory, a FIFO or another special file, or cannot be looked at.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"dataset: file not found: {path} (use 'synthetic' or a .jsonl path)") from None
    except OSError as exc:
        raise ConfigError(f"dataset: {path} cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISREG(mode):
        return
    kind = "a directory" if stat.S_ISDIR(mode) else _SPECIAL.get(stat.S_IFMT(mode), "a special file")
    raise ConfigError(f"dataset: {path} is {kind}, not a regular file; give the path of a .jsonl file")


#: What a non-regular file is, by ``stat.S_IFMT``.
_SPECIAL = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def check_tracking(cfg: ExperimentConfig) -> None:
    """The store's URI has a scheme an installed MLflow handles; the experiment name from the
    environment fits MLflow (the config's own values were checked by ``ExperimentConfig``).

    Raises:
        ConfigError: naming ``tracking_uri`` (or ``MLFLOW_TRACKING_URI``) or ``MLFLOW_EXPERIMENT_NAME``.
    """
    uri = target_tracking_uri(cfg.tracking_uri)
    problem = unknown_scheme(uri)
    if problem:
        source = "tracking_uri" if cfg.tracking_uri else "MLFLOW_TRACKING_URI"
        raise ConfigError(
            f"{source}: {problem}; give an http(s)://, sqlite:/// or database URI, or install the "
            "plugin that provides the scheme"
        )
    env_name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not cfg.experiment_name and env_name and not os.environ.get("MLFLOW_RUN_ID"):
        name_problem = TEXT_LIMITS["experiment_name"].problem(env_name)
        if name_problem:
            raise ConfigError(f"MLFLOW_EXPERIMENT_NAME (experiment_name): {name_problem}")


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
