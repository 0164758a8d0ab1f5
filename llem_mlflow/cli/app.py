"""The ``llem-mlflow`` command line: the only place that turns errors into exit codes.

Exit codes: 0 ok, 2 invalid configuration (one line naming the field), 1 runtime failure.

Every config option of ``run`` is typed ``str | None`` and defaults to None, so an unset flag never
overrides a YAML config, and ``''`` (what ``mlflow run`` passes for a parameter the user left out)
also means unset. Pydantic validates the values, so a bad flag and a bad YAML value take the same
path: exit 2 with one line ``error: invalid config: <field>: ...``. The default and the metavar
shown in ``--help`` come from ``ExperimentConfig.model_fields``: the config is their one source.
"""

from __future__ import annotations

import functools
import gc
import inspect
import json
import logging
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    NoReturn,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
)

import typer
from typer.core import TyperCommand, TyperGroup

from llem_mlflow._version import __version__
from llem_mlflow.config import ExperimentConfig, load_config
from llem_mlflow.errors import ConfigError, LlemError, RunInterrupted
from llem_mlflow.secrets import scrub_secrets

if TYPE_CHECKING:
    from llem_mlflow.results.schema import Timings
    from llem_mlflow.run.execute import Outcome

F = TypeVar("F", bound=Callable[..., Any])
_LABEL = 16  # width of the label column in `run`'s summary and in `config`


def _plain_flags(params: Any) -> Any:
    """Boolean flags take no value: show ``--no-mlflow``, not ``--no-mlflow <bool>``."""
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> Any:
        return _plain_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> Any:
        return _plain_flags(super().get_params(ctx))


def _dashes(token: str) -> str:
    return token.replace("_", "-")


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # `mlflow run -P batch_size=2` passes `--batch_size 2`: option names accept _ for -.
    context_settings={"help_option_names": ["-h", "--help"], "token_normalize_func": _dashes},
    help="Measure the GPU energy of LLM inference in-process and log it to MLflow.",
)

Opt = typer.Option


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llem-mlflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, Opt("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Measure the GPU energy of LLM inference in-process and log it to MLflow."""


def _err(message: str) -> None:
    typer.echo(f"error: {scrub_secrets(message)}", err=True)


# ---------------------------------------------------------------- config options from the model


def _metavar(field: str) -> str:
    """INTEGER, FLOAT, TEXT or the choices ``[a|b]`` of ``ExperimentConfig``'s field type."""
    annotation = ExperimentConfig.model_fields[field].annotation
    if get_origin(annotation) in (Union, UnionType):  # `str | None`: the non-None member
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return "[" + "|".join(str(choice) for choice in get_args(annotation)) + "]"
    return {int: "INTEGER", float: "FLOAT"}.get(annotation, "TEXT")  # type: ignore[arg-type]


def _default_text(field: str) -> str | bool:
    """The field's default as shown by ``--help`` (False: none to show)."""
    default = ExperimentConfig.model_fields[field].default
    return False if default is None else str(default)


def _cfg(field: str, help: str, *names: str, default_text: str | None = None) -> Any:
    """A ``run`` option for config field ``field``: metavar, shown default and limits from the config."""
    from llem_mlflow.config import limits

    bounds = limits(field)
    return Opt(
        *names,
        metavar=_metavar(field),
        show_default=default_text or _default_text(field),
        help=f"{help} Allowed: {bounds}." if bounds else help,
    )


def _default_experiment() -> str:
    from llem_mlflow.config import DEFAULT_EXPERIMENT

    return DEFAULT_EXPERIMENT


@app.command(cls=_Command)
def run(
    config: Annotated[
        str | None, typer.Argument(metavar="CONFIG.yaml", help="YAML config file (flags override it).")
    ] = None,
    config_file: Annotated[
        str | None,
        Opt("--config", metavar="CONFIG.yaml", help="The YAML config file, as an option (`mlflow run`)."),
    ] = None,
    model: Annotated[str | None, _cfg("model", "Hub id, shipped config name or local model folder.")] = None,
    backend: Annotated[str | None, _cfg("backend", "Inference backend.")] = None,
    n: Annotated[str | None, _cfg("n", "Number of prompts.", "--n", "-n")] = None,
    batch_size: Annotated[str | None, _cfg("batch_size", "Prompts per generate() call.")] = None,
    precision: Annotated[
        str | None, _cfg("precision", "auto: bf16 on CUDA (fp16 without bf16 support), fp32 on CPU.")
    ] = None,
    max_input_tokens: Annotated[
        str | None, _cfg("max_input_tokens", "Synthetic prompt length, or truncation of text prompts.")
    ] = None,
    max_output_tokens: Annotated[
        str | None, _cfg("max_output_tokens", "New tokens per prompt, exactly (EOS is ignored).")
    ] = None,
    dataset: Annotated[str | None, _cfg("dataset", "'synthetic' or a .jsonl file of prompts.")] = None,
    prompt_field: Annotated[
        str | None, _cfg("prompt_field", "JSON key of the prompt text in a .jsonl dataset.")
    ] = None,
    weights: Annotated[
        str | None, _cfg("weights", "auto: pretrained if they can be had, else random (with a warning).")
    ] = None,
    trust_remote_code: Annotated[
        str | None, _cfg("trust_remote_code", "true: run Python code from the model's repo (read it first).")
    ] = None,
    device: Annotated[str | None, _cfg("device", "auto: cuda when torch sees a GPU, else cpu.")] = None,
    seed: Annotated[str | None, _cfg("seed", "Random seed (prompts, random weights).")] = None,
    warmup_batches: Annotated[
        str | None, _cfg("warmup_batches", "generate() calls before measuring.")
    ] = None,
    warmup_settle_cv_pct: Annotated[
        str | None, _cfg("warmup_settle_cv_pct", "Warm up until the last 3 batch latencies vary less (CV %).")
    ] = None,
    warmup_max_batches: Annotated[
        str | None, _cfg("warmup_max_batches", "Cap on warm-up batches when settling.")
    ] = None,
    cycles: Annotated[
        str | None, _cfg("cycles", "Measured windows, model loaded once; 2+ give 95% intervals.")
    ] = None,
    cooldown_s: Annotated[str | None, _cfg("cooldown_s", "Pause between cycles in seconds.")] = None,
    baseline_s: Annotated[
        str | None, _cfg("baseline_s", "Idle-power baseline in seconds, model loaded (0: none).")
    ] = None,
    idle_settle_max_s: Annotated[
        str | None, _cfg("idle_settle_max_s", "Wait up to this long for idle power to settle (0: no wait).")
    ] = None,
    measurement_methodology: Annotated[
        str | None, _cfg("measurement_methodology", "total, or steady_state (trims the ramp).")
    ] = None,
    isolated_prefill: Annotated[
        str | None, _cfg("isolated_prefill", "Also measure prefill alone (max_new_tokens=1 passes).")
    ] = None,
    device_map: Annotated[
        str | None, _cfg("device_map", "Split over GPUs: auto, balanced, sequential or JSON {module: gpu}.")
    ] = None,
    cache: Annotated[
        str | None, _cfg("cache", "KV cache: dynamic, or static (preallocated; needed by --compile).")
    ] = None,
    compile: Annotated[
        str | None,
        _cfg("compile", "torch.compile the decode step in generate() (reduce-overhead: CUDA graphs)."),
    ] = None,
    attention: Annotated[
        str | None, _cfg("attention", "Attention implementation at load (auto: the model's default).")
    ] = None,
    sampling_interval_s: Annotated[
        str | None, _cfg("sampling_interval_s", "Power trace period in seconds.")
    ] = None,
    gain_uncertainty_pct: Annotated[
        str | None, _cfg("gain_uncertainty_pct", "Power sensor gain uncertainty, +- % of reading.")
    ] = None,
    carbon_intensity_g_per_kwh: Annotated[
        str | None,
        _cfg("carbon_intensity_g_per_kwh", "Grid gCO2/kWh for a carbon figure (no lookup)."),
    ] = None,
    pue: Annotated[str | None, _cfg("pue", "Data-centre PUE applied to the carbon figure.")] = None,
    output_dir: Annotated[str | None, _cfg("output_dir", "Parent folder of result folders.")] = None,
    tracking_uri: Annotated[
        str | None,
        _cfg(
            "tracking_uri",
            "MLflow tracking URI.",
            default_text="MLFLOW_TRACKING_URI, else sqlite:///mlflow.db",
        ),
    ] = None,
    experiment_name: Annotated[
        str | None, _cfg("experiment_name", "MLflow experiment name.", default_text=_default_experiment())
    ] = None,
    run_name: Annotated[str | None, _cfg("run_name", "MLflow run name.")] = None,
    no_mlflow: Annotated[bool, Opt("--no-mlflow", help="Write files only; do not log to MLflow.")] = False,
) -> None:
    """Run one experiment: load the model, measure, write result.json + trace, log to MLflow."""
    cfg = _load(locals())
    _execute(cfg)


def _same_options_as(command: Callable[..., Any]) -> Callable[[F], F]:
    """Give the decorated command ``command``'s parameters (typer reads them via ``__wrapped__``)."""

    def decorate(func: F) -> F:
        return cast(F, functools.update_wrapper(func, command, assigned=(), updated=()))

    return decorate


def _load(flags: dict[str, Any]) -> ExperimentConfig:
    """The config from the YAML path and flags of ``run``/``config``; invalid: exit 2 with one line."""
    try:
        return load_config(_config_path(flags.get("config"), flags.get("config_file")), **_overrides(flags))
    except ConfigError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None


def _overrides(flags: dict[str, Any]) -> dict[str, Any]:
    """The config fields among ``run``'s flags (None: unset; ``--no-mlflow``: ``mlflow=False``)."""
    not_fields = ("config", "config_file", "no_mlflow", "gpus")
    overrides = {k: (None if v == "" else v) for k, v in flags.items() if k not in not_fields}
    if flags.get("no_mlflow"):
        overrides["mlflow"] = False
    return overrides


def _config_path(argument: str | None, option: str | None) -> str | None:
    if argument and option and argument != option:
        raise ConfigError(f"two config files given ({argument} and --config {option}); give one")
    return argument or option or None


def _execute(cfg: ExperimentConfig) -> None:
    from llem_mlflow.cli.console import ConsoleProgress
    from llem_mlflow.interrupts import EXIT_CODE, holding
    from llem_mlflow.measure.timings import process_age_s
    from llem_mlflow.run.execute import execute

    startup_s = process_age_s() if _Process.is_cli else None
    _setup_logging()
    outcome = None
    with _exit_codes():
        try:
            with ConsoleProgress() as progress:
                outcome = execute(cfg, progress=progress, startup_s=startup_s)
        except RunInterrupted as exc:
            _stopped(str(exc), exc.outcome is None)
        except KeyboardInterrupt:
            if outcome is None:  # after it, the run was whole and kept: the summary follows
                _stopped("interrupted before measuring began: nothing was measured, nothing kept", True)
    assert outcome is not None
    with holding() as held:  # a signal now waits for the summary and the last line
        typer.echo(summary(outcome))
        if outcome.write_error:  # the result folder could not hold the files: what was kept where
            _err(outcome.write_error)
        if outcome.tracking_error:
            _err(outcome.tracking_error)
    if outcome.write_error or outcome.tracking_error:
        raise typer.Exit(1)
    if held.signal:
        raise typer.Exit(EXIT_CODE)


@contextmanager
def _exit_codes() -> Iterator[None]:
    """A project error as its one line and exit code: ConfigError 2, any other LlemError 1."""
    try:
        yield
    except ConfigError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    except LlemError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None


def _stopped(message: str, kill_mlflow_run: bool) -> NoReturn:
    """One line saying what an interrupted run kept; the ``mlflow run`` run ends KILLED; exit 130."""
    from llem_mlflow import interrupts
    from llem_mlflow.tracking import client as tracking

    _err(message)
    if kill_mlflow_run:
        tracking.end_env_run("KILLED")
    raise typer.Exit(interrupts.EXIT_CODE)


# ---------------------------------------------------------------- the summary after a run


def _line(label: str, value: str) -> str:
    return f"{label:<{_LABEL}}{value}"


def _joules(value: float) -> str:
    """Energy for reading: ``1,301 J``, ``10.16 J``, ``12.3 mJ``."""
    size = abs(value)
    if size >= 1000:
        return f"{value:,.0f} J"
    if size >= 1 or size == 0:
        return f"{value:.4g} J"
    if size >= 1e-3:
        return f"{value * 1e3:.4g} mJ"
    return f"{value * 1e6:.4g} uJ"


def _not_measured_reason(warnings: list[str]) -> str:
    prefix = "energy not measured: "
    for w in warnings:
        if w.startswith(prefix):
            return w[len(prefix) :]
    return "no NVIDIA GPU energy counter"


def summary(outcome: Outcome) -> str:
    """What a run measured, one ``label  value`` per line; the last lines name its folder and run."""
    r = outcome.result
    lines = [
        _line("model", f"{r.model} ({r.weights} weights, {r.precision}, {r.device})"),
        _line("workload", f"{r.config.n} prompts: {r.input_tokens:,} tokens in, {r.output_tokens:,} out"),
        _line(
            "time",
            f"{r.total_inference_time_sec:.2f} s measured, {r.avg_tokens_per_second:,.1f} output tokens/s",
        ),
    ]
    e = r.energy
    if e is not None and e.unknown_gpu_windows:
        lines.append(_line("energy", _incomplete_energy(e)))
    elif r.total_energy_j is None or e is None:
        lines.append(_line("energy", f"not measured: {_not_measured_reason(r.warnings)}"))
    else:
        gpus = f"{len(e.per_gpu)} GPU" + ("s" if len(e.per_gpu) != 1 else "")
        edges = f" +- {_joules(e.edge_uncertainty_j)}" if e.edge_uncertainty_j is not None else ""
        lines.append(_line("energy", f"{_joules(r.total_energy_j)}{edges} on {gpus} ({r.energy_source})"))
        if e.net_j is not None and e.idle_power_w is not None:
            lines.append(_line("net of idle", f"{_joules(e.net_j)} (idle {e.idle_power_w:,.1f} W)"))
        if r.avg_energy_per_token_j is not None:
            lines.append(_line("energy/token", f"{_joules(r.avg_energy_per_token_j)} per output token"))
    lines.extend(_cycle_lines(r))
    lines.extend(_method_lines(r))
    if r.warnings:
        lines.append(_line("warnings", f"{len(r.warnings)} (see result.json)"))
    if outcome.timings is not None:
        lines.append(_line("stages", stages_line(outcome.timings)))
    lines.append(_line("result folder", str(outcome.result_dir)))
    if outcome.run_id:
        run = outcome.run_id
    elif outcome.tracking_error:
        run = "not logged (see the error below)"
    else:
        run = "not logged (--no-mlflow)"
    lines.append(_line("mlflow run", run))
    return "\n".join(lines)


def _why_no_bounds(n: int) -> str:
    from llem_mlflow.figures.stats import MIN_INTERVAL_N

    return f"fewer than {MIN_INTERVAL_N} cycles" if n < MIN_INTERVAL_N else "a cycle's value is not positive"


def _incomplete_energy(e: Any) -> str:
    """The energy line when a GPU's counter delta is unknown: no total, the known part named as such."""
    known = f"; the known part is {_joules(e.partial_gross_j)}" if e.partial_gross_j is not None else ""
    return (
        f"unknown: the counter delta of {e.unknown_gpu_windows} (GPU, window) pair(s) could not be "
        f"taken (flag energy_incomplete, see the warnings){known}"
    )


def _cycle_lines(r: Any) -> list[str]:
    """With 2+ cycles: each figure as mean [95% interval] and its CV (no bounds below 3 cycles)."""
    from llem_mlflow.cli.console import with_interval

    c = r.cycles
    if c is None or c.n < 2:
        return []
    figures = [
        ("J/token", c.energy_per_output_token_j_ci95, 4),
        ("net J/token", c.net_energy_per_output_token_j_ci95, 4),
        ("tok/s", c.output_tokens_per_s_ci95, 3),
    ]
    lines = [_line("cycles", f"{c.n} (mean [95% interval], CV across cycles)")]
    for name, interval, digits in figures:
        if interval is None or interval.n < 2:
            continue
        text = with_interval(interval.mean, interval.ci95_low, interval.ci95_high, digits)
        cv = f"{interval.cv_pct:.2f}%" if interval.cv_pct is not None else "n/a"
        rests = f", {interval.n} of {c.n} cycles" if interval.left_out else ""
        bounds = "" if interval.ci95_low is not None else f" (no interval: {_why_no_bounds(interval.n)})"
        lines.append(_line(f"  {name}", f"{text}{bounds}, CV {cv}{rests}"))
    return lines


def _method_lines(r: Any) -> list[str]:
    """Steady-state trimming, isolated prefill and idle settle, where they ran."""
    lines = []
    if r.steady_state is not None:
        st = r.steady_state
        trimmed = ", ".join(str(t) for t in st.trimmed_batches)
        lines.append(_line("steady state", f"ramp batches left out per cycle: {trimmed}"))
        if st.in_window_read_s is not None and st.in_window_reads is not None and st.in_window_read_pct:
            cost = f"{sum(st.in_window_reads)} in {sum(st.in_window_read_s) * 1000:,.1f} ms"
            share = f"up to {max(st.in_window_read_pct):.2f}% of a window"
            lines.append(_line("", f"counter reads inside the windows: {cost} ({share})"))
    p = r.prefill_isolated
    if p is not None:
        energy = f"{_joules(p.per_pass_j)} per pass, " if p.per_pass_j is not None else ""
        per_token = f", {_joules(p.per_input_token_j)}/input token" if p.per_input_token_j is not None else ""
        lines.append(_line("prefill alone", f"{energy}{p.per_pass_s * 1000:,.1f} ms per pass{per_token}"))
    idle = r.idle_settle
    if idle is not None:
        state = "settled" if idle.settled else "still drifting (cap reached)"
        lines.append(_line("idle settle", f"{state} after {idle.waited_s:.1f} s, {idle.last_w:,.1f} W"))
    return lines


_STAGE_NAMES = {
    "import_wait": "mlflow import wait",
    "warmup": "warm-up",
    "idle_settle": "idle settle",
    "prefill_isolated": "prefill alone",
    "idle_after": "idle after",
}


def stages_line(t: Timings) -> str:
    """``checks 0.8 s, load 12.1 s, ... (total 28.0 s)``: stages of 0.05 s or more, in run order.

    With ``startup_s`` known (the CLI) it comes first and the total counts from process start.
    """
    stages = {"startup": t.startup_s} if t.startup_s is not None else {}
    stages.update(t.stages())
    shown = [f"{_STAGE_NAMES.get(k, k)} {v:.1f} s" for k, v in stages.items() if v is not None and v >= 0.05]
    total = t.total_s + (t.startup_s or 0.0)
    since = " from process start" if t.startup_s is not None else ""
    return f"{', '.join(shown)} (total {total:.1f} s{since})"


class _CurrentStderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is now, so log lines go above the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(scrub_secrets(self.format(record)) + "\n")  # MLflow's lines may name the URI
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="[llem] %(levelname)s: %(message)s", handlers=[_CurrentStderr()]
    )


# ---------------------------------------------------------------- sweep


def _sweep_only(
    gpus: Annotated[
        str | None,
        Opt(
            metavar="0,1",
            help="Run points in parallel, one worker process per GPU (indices as nvidia-smi shows them); "
            "each worker sees and measures only its GPU.",
        ),
    ] = None,
) -> None:
    """The options ``sweep`` has beyond ``run``'s."""


def _options_of(*commands: Callable[..., Any]) -> Callable[[F], F]:
    """Give the decorated command the parameters of ``commands``, in order (typer reads the signature)."""
    params = [p for c in commands for p in inspect.signature(c, eval_str=True).parameters.values()]

    def decorate(func: F) -> F:
        func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return func

    return decorate


@app.command("sweep", cls=_Command)
@_options_of(run, _sweep_only)
def sweep_points(**flags: Any) -> None:
    """Measure each point of a sweep file: one MLflow parent run, a nested child run per point.

    The file holds the usual config fields plus `sweep:` (field: list of values, or a list of variants).

    Flags override the base config. Running the same sweep again measures only what is not FINISHED.
    """
    from llem_mlflow.sweep.execute import load_sweep
    from llem_mlflow.sweep.parallel import check_points, resolve_gpus

    try:
        path = _config_path(flags.get("config"), flags.get("config_file"))
        if not path:
            raise ConfigError("sweep needs a sweep file: llem-mlflow sweep FILE.yaml")
        plan = load_sweep(path, **_overrides(flags))
        gpus = resolve_gpus(flags["gpus"]) if flags.get("gpus") else ()
        if gpus:
            check_points(plan.points)
    except ConfigError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    _run_sweep(plan, gpus)


def _run_sweep(plan: Any, gpus: tuple[str, ...] = ()) -> None:
    from llem_mlflow.cli.console import ConsoleProgress
    from llem_mlflow.sweep.execute import Parts, markdown_table, run_sweep

    _setup_logging()
    where = f" on GPUs {','.join(gpus)}, one worker each" if gpus else ""
    typer.echo(
        f"[llem] sweep {plan.sweep_id}: {len(plan.points)} points over {', '.join(plan.fields)}{where}",
        err=True,
    )
    with _exit_codes():
        try:
            with ConsoleProgress() as progress:
                parts = Parts(progress=None if gpus else progress, report=_report_point, gpu_ids=gpus)
                outcome = run_sweep(plan, parts)
        except RunInterrupted as exc:
            _stopped(f"{exc}; the sweep stopped (run it again to measure the rest)", False)
        except KeyboardInterrupt:
            _stopped("interrupted: the sweep stopped (run it again to measure the rest)", False)
    typer.echo(markdown_table(outcome.rows))
    typer.echo(_line("summary", str(outcome.summary_files[0].parent)))
    typer.echo(_line("mlflow parent", outcome.parent_run_id or "not logged (--no-mlflow)"))
    if outcome.failed:
        _err(f"{len(outcome.failed)} point(s) failed; run the same sweep again to measure only those")
        raise typer.Exit(1)


def _report_point(row: Any) -> None:
    """One line per point as it is settled (stderr, beside the progress display)."""
    run = f"  run {row.run_id}" if row.run_id else ""
    note = f"  ({row.note})" if row.status in ("invalid", "failed", "not logged") else ""
    typer.echo(f"[llem] point {row.point.label}: {row.status}{run}{note}", err=True)


# ---------------------------------------------------------------- compare


def _register_compare() -> None:
    from llem_mlflow.cli.compare import compare

    app.command("compare", cls=_Command)(compare)


_register_compare()


# ---------------------------------------------------------------- log


@app.command("log", cls=_Command)
def log_saved(
    result_dir: Annotated[str, typer.Argument(help="A result folder (holds result.json and the trace).")],
    tracking_uri: Annotated[str | None, Opt(metavar="TEXT", help="MLflow tracking URI.")] = None,
    experiment_name: Annotated[str | None, Opt(metavar="TEXT", help="MLflow experiment name.")] = None,
    run_name: Annotated[str | None, Opt(metavar="TEXT", help="MLflow run name.")] = None,
) -> None:
    """Log a saved result folder to MLflow (e.g. after the tracking server was unreachable)."""
    from llem_mlflow.tracking.recording import log_folder

    _setup_logging()
    _check_names(tracking_uri=tracking_uri, experiment_name=experiment_name, run_name=run_name)
    try:
        logged = log_folder(Path(result_dir), tracking_uri or None, experiment_name or None, run_name or None)
    except LlemError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    if logged.already_logged:
        typer.echo(f"[llem] already logged in MLflow run {logged.run_id}: nothing logged again", err=True)
    typer.echo(_line("mlflow run", logged.run_id))


@app.command("sync", cls=_Command)
def sync_spool(
    entries: Annotated[
        list[str] | None, typer.Argument(help="Spool entries (folders or ids); default: every entry.")
    ] = None,
    tracking_uri: Annotated[
        str | None, Opt(metavar="TEXT", help="Log to this store instead of each entry's own.")
    ] = None,
    dry_run: Annotated[bool, Opt("--dry-run", help="List what would be logged; log nothing.")] = False,
    experiment_name: Annotated[
        str | None,
        Opt(metavar="TEXT", help="Log into this MLflow experiment, not the name saved with each entry."),
    ] = None,
) -> None:
    """Upload results spooled when MLflow was unreachable, each once, to the store it was meant for.

    The spool is LLEM_MLFLOW_SPOOL_DIR, else ~/.local/state/llem-mlflow/spool. It holds no credentials:
    they come from --tracking-uri, from MLFLOW_TRACKING_URI when it names the same store (a database
    password), or from the environment (MLFLOW_TRACKING_USERNAME / PASSWORD / TOKEN, PGPASSWORD).
    """
    from llem_mlflow.tracking import spool

    _setup_logging()
    _check_names(tracking_uri=tracking_uri, experiment_name=experiment_name)
    try:
        chosen, skipped = _spool_entries(entries)
    except LlemError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    for bad in skipped:
        _err(f"{bad.reason}; skipped (move it out of the spool)")
    if not chosen:
        typer.echo(f"[llem] nothing spooled in {spool.spool_dir()}", err=True)
    rows = spool.sync(chosen, tracking_uri or None, dry_run, experiment_name=experiment_name or None)
    for row in rows:
        where = f" run {row.run_id}" if row.run_id else ""
        note = f" ({row.note})" if row.note else ""
        at = f" at {row.tracking_uri}" if row.tracking_uri else ""  # busy/gone rows have no store
        typer.echo(f"{row.entry.llem_id}  {row.status}{where}{at}{note}")
    if skipped or any(r.status == "failed" for r in rows):
        raise typer.Exit(1)  # busy and gone: another sync has them


def _check_names(**options: str | None) -> None:
    """``log``/``sync`` options that name a store, experiment or run fit what MLflow takes (the config's
    limits); else exit 2 with one line naming the option and the limit."""
    from llem_mlflow.config import TEXT_LIMITS

    for name, value in options.items():
        problem = TEXT_LIMITS[name].problem(value) if value else None
        if problem:
            _err(f"--{_dashes(name)}: {problem}")
            raise typer.Exit(2)


def _spool_entries(names: list[str] | None) -> tuple[list[Any], list[Any]]:
    """The entries to sync (those named, else every sound one) and the spool's bad entries, skipped."""
    from llem_mlflow.tracking import spool

    return (spool.named(names), []) if names else spool.scan()


# ---------------------------------------------------------------- config


@app.command("config", cls=_Command)
@_same_options_as(run)
def show_config(**flags: Any) -> None:
    """Show what a run here would use: versions, device, precision, energy source, MLflow store, settings.

    Takes the same config file and flags as `run` and shows how they resolve: every setting the config
    hash covers and the hash (provisional where the model's load decides a setting). What `run` refuses
    before loading the model (a bad value, a device_map where torch sees no GPU, an unreadable dataset)
    is refused here with the same message and exit code.
    """
    cfg = _load(flags)
    with _exit_codes():
        planned = _plan(cfg)
    for label, value in _describe(cfg, planned):
        typer.echo(_line(label, value))


@dataclass(frozen=True)
class _Planned:
    """What `run`'s checks before loading settle: the device (None: torch failed) and the dataset."""

    device: str | None
    device_text: str
    dataset: str  # "synthetic" or identity.dataset_digest of the file


def _plan(cfg: ExperimentConfig) -> _Planned:
    """`run`'s checks that need no model: the backend's own, the dataset file, the device load() takes.

    Raises what `run` raises for them (``ConfigError``: exit 2; another ``LlemError``: exit 1).
    """
    from llem_mlflow.backends import create_backend
    from llem_mlflow.results import identity
    from llem_mlflow.run import preflight

    backend = create_backend(cfg)
    dataset = identity.SYNTHETIC
    if preflight.check_dataset(cfg) is not None:
        dataset = identity.dataset_digest(Path(cfg.dataset))
    device, text = _device(cfg.device, backend)
    return _Planned(device, text, dataset)


def _describe(cfg: ExperimentConfig, planned: _Planned) -> list[tuple[str, str]]:
    from llem_mlflow.backends.catalogue import shipped_models
    from llem_mlflow.backends.runtime import backend_versions
    from llem_mlflow.tracking.client import mlflow_version

    versions = _guarded(backend_versions, {})
    torch = versions.get("torch")
    cuda = versions.get("cuda_runtime")
    rows = [
        ("llem-mlflow", __version__),
        ("torch", f"{torch} ({f'CUDA {cuda}' if cuda else 'no CUDA'} build)" if torch else "not installed"),
        ("transformers", versions.get("transformers") or "not installed"),
        ("mlflow", mlflow_version() or "not installed"),
        ("model", cfg.model),
    ]
    device = planned.device
    rows.append(("device", planned.device_text))
    rows.append(("precision", _precision(cfg.precision, device)))
    rows.extend(_energy_source(device))
    rows.extend(_tracking(cfg))
    rows.append(("output folder", str(Path(cfg.output_dir).resolve())))
    rows.extend(_settings(cfg, planned))
    models = textwrap.fill(
        ", ".join(shipped_models()), width=100, subsequent_indent=" " * _LABEL, break_on_hyphens=False
    )
    rows.append(("shipped models", models))
    return rows


def _guarded(read: Callable[[], Any], fallback: Any) -> Any:
    try:
        return read()
    except Exception:  # a broken install must not turn `config` into a traceback
        return fallback


def _device(requested: str, backend: object) -> tuple[str | None, str]:
    """(device a run would use or None, text); the backend's ``planned_device`` when it has one.

    A refusal of the run's own (``LlemError``) propagates; a broken torch only shows as unavailable.
    """
    from llem_mlflow.backends.runtime import resolve_device

    planned = getattr(backend, "planned_device", None)
    try:
        device = str(planned()) if callable(planned) else resolve_device(requested)
    except LlemError:
        raise
    except Exception as exc:
        return None, f"unavailable: torch failed ({type(exc).__name__}: {exc})"
    if requested != "auto":
        return device, device
    why = "torch sees a CUDA device" if device == "cuda" else "torch sees no CUDA device"
    return device, f"{device} (auto: {why})"


def _precision(requested: str, device: str | None) -> str:
    precision = _resolved_precision(requested, device)
    if device is None:
        return "unknown (no device)" if requested == "auto" else requested
    if precision is None:
        return "unknown: torch failed"
    return f"{precision} (auto on {device})" if requested == "auto" else precision


def _resolved_precision(requested: str, device: str | None) -> str | None:
    """The precision a run on ``device`` takes; None without a device or when torch fails."""
    from llem_mlflow.backends.runtime import resolve_precision

    if device is None:
        return None
    try:
        return resolve_precision(requested, device)
    except Exception:  # a broken torch: shown as unknown, as the device is
        return None


#: What a setting the config hash covers is decided by, when only loading the model decides it.
_AT_LOAD = "decided when the model loads"
_SETTING = 34  # label width of the resolved.<field> rows (the longest is resolved.measurement_methodology)


def _settings(cfg: ExperimentConfig, planned: _Planned) -> list[tuple[str, str]]:
    """``resolved.<field>`` rows (the names MLflow params use) for every setting the hash covers, then the
    hash: exact when nothing is left to the load, else provisional with placeholders for those settings."""
    from llem_mlflow.results import identity

    precision = _resolved_precision(cfg.precision, planned.device)
    if planned.device is None or precision is None:
        return [("config hash", "unknown (no device: torch failed)")]
    at_load = _decided_at_load(cfg, planned)
    resolved = identity.resolve(
        cfg,
        weights="random" if cfg.weights == "random" else "pretrained",
        precision=precision,
        device=planned.device,
        revision=None,
        dataset=planned.dataset,
        tokenizer=None,
        gpus=1,
    )
    values = resolved.model_dump(mode="json")
    rows = [
        (
            f"resolved.{name}".ljust(_SETTING),
            f"{_AT_LOAD} ({at_load[name]})" if name in at_load else _setting_text(values[name]),
        )
        for name in identity.RECIPE_FIELDS[resolved.recipe]
        if name != "recipe"
    ]
    note = f" (provisional: {', '.join(at_load)} {_AT_LOAD}; a run's hash covers them)" if at_load else ""
    return [*rows, ("config hash", f"{resolved.measurement_hash()}{note}")]


def _decided_at_load(cfg: ExperimentConfig, planned: _Planned) -> dict[str, str]:
    """Settings the hash covers that only loading the model (or its tokenizer) decides, with what decides."""
    from llem_mlflow.results import identity

    at_load = {}
    if cfg.weights == "auto":
        at_load["weights"] = "auto: pretrained if they can be had, else random"
    if cfg.weights != "random":
        at_load["model_revision"] = "the commit of the pretrained weights"
    if cfg.dataset != identity.SYNTHETIC:
        at_load["tokenizer"] = "the tokenizer of the text prompts"
    if planned.device == "cuda" and cfg.device_map is not None:
        at_load["gpus"] = "how many GPUs the device_map uses"
    if cfg.attention == "auto":
        at_load["attention"] = "the model's default kernel, e.g. sdpa"
    return at_load


def _setting_text(value: Any) -> str:
    """A setting as `config` shows it: null as none, booleans lower-case, dicts and lists as JSON."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def _energy_source(device: str | None) -> list[tuple[str, str]]:
    from llem_mlflow.measure.device import try_open_session

    session, reason = try_open_session()
    if session is None:
        return [("energy source", f"none ({reason})")]
    with session:
        gpus = session.all_gpus()
        nvml = f"NVML driver {session.driver_version()}, {len(gpus)} GPU(s)"
        rows = [
            (
                "energy source",
                f"nvml ({nvml})" if device == "cuda" else f"none (the model would run on {device}; {nvml})",
            )
        ]
        for g in gpus:
            limit = f"{g.power_limit_w:.0f} W" if g.power_limit_w else "?"
            rows.append((f"GPU {g.nvml_index}", f"{g.name}  {g.uuid}  limit {limit}"))
    return rows


def _tracking(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    from llem_mlflow.tracking import client as tracking

    if not cfg.mlflow:
        return [("tracking store", "none (mlflow off: files only)")]
    uri = tracking.target_tracking_uri(cfg.tracking_uri)
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if run_id:  # inside `mlflow run`: the result goes into its run (see tracking)
        experiment = f"the one of run {run_id} (MLFLOW_RUN_ID, set by `mlflow run`)"
    else:
        experiment = tracking.resolve_experiment_name(cfg.experiment_name)
    return [("tracking store", tracking.scrub_uri(uri)), ("experiment", experiment)]


class _Process:
    """``is_cli``: ``main()`` runs, so the process's age when a run starts is its startup time."""

    is_cli = False


def main() -> None:
    """Console-script entry point; the process ends without CPython's final garbage collections.

    After a run the heap holds millions of objects (torch, transformers, MLflow). On exit CPython
    walks them in full collections while it tears modules down: 2-6 s of nothing after the summary.
    ``gc.freeze()`` moves them out of the collector's reach first. Nothing is skipped that holds data:
    atexit handlers run, open files are flushed and closed, result files were fsync'ed when written,
    and MLflow was called synchronously (its async logging is not used).
    """
    from llem_mlflow.interrupts import graceful

    _Process.is_cli = True
    try:
        with graceful():  # SIGTERM = Ctrl-C; a second one exits at once
            app()
    except Exception as exc:  # a bug's traceback, without the credentials its text may hold
        sys.stderr.write(scrub_secrets("".join(traceback.format_exception(exc))))
        raise SystemExit(1) from None
    finally:
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
