"""The ``llem-mlflow`` command line: the only place that turns errors into exit codes.

Exit codes: 0 ok, 2 invalid configuration (one line naming the field), 1 runtime failure.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer

from llem_mlflow._version import __version__
from llem_mlflow.config import load_config
from llem_mlflow.errors import ConfigError, LlemError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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
    typer.echo(f"error: {message}", err=True)


@app.command()
def run(
    config: Annotated[str | None, typer.Argument(help="YAML config file (flags override it).")] = None,
    model: Annotated[str | None, Opt(help="Hub id, shipped config name or local model folder.")] = None,
    backend: Annotated[str | None, Opt(help="Inference backend: pytorch.")] = None,
    n: Annotated[int | None, Opt("--n", "-n", help="Number of prompts.")] = None,
    batch_size: Annotated[int | None, Opt(help="Prompts per generate() call.")] = None,
    precision: Annotated[
        str | None, Opt(help="auto|fp32|fp16|bf16 (auto: bf16 on CUDA, fp32 on CPU).")
    ] = None,
    max_input_tokens: Annotated[int | None, Opt(help="Prompt length / truncation.")] = None,
    max_output_tokens: Annotated[int | None, Opt(help="New tokens per prompt (exact).")] = None,
    dataset: Annotated[str | None, Opt(help="'synthetic' or a .jsonl path.")] = None,
    weights: Annotated[str | None, Opt(help="auto|pretrained|random.")] = None,
    device: Annotated[str | None, Opt(help="auto|cuda|cpu.")] = None,
    seed: Annotated[int | None, Opt(help="Random seed.")] = None,
    warmup_batches: Annotated[int | None, Opt(help="Warm-up generate() calls.")] = None,
    baseline_s: Annotated[float | None, Opt(help="Idle baseline seconds (0: none).")] = None,
    sampling_interval_s: Annotated[float | None, Opt(help="Power trace period (s).")] = None,
    output_dir: Annotated[str | None, Opt(help="Parent folder of result folders.")] = None,
    tracking_uri: Annotated[str | None, Opt(help="MLflow tracking URI.")] = None,
    experiment_name: Annotated[str | None, Opt(help="MLflow experiment name.")] = None,
    run_name: Annotated[str | None, Opt(help="MLflow run name.")] = None,
    no_mlflow: Annotated[bool, Opt("--no-mlflow", help="Write files only; do not log to MLflow.")] = False,
) -> None:
    """Run one experiment: load the model, measure, write result.json + trace, log to MLflow."""
    # Empty strings mean "unset": MLproject passes '' for parameters left at their default.
    overrides = {k: (None if v == "" else v) for k, v in locals().items() if k not in ("config", "no_mlflow")}
    if no_mlflow:
        overrides["mlflow"] = False
    try:
        cfg = load_config(config, **overrides)
    except ConfigError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    _execute(cfg)


def _execute(cfg: Any) -> None:
    from llem_mlflow.runner import execute

    _setup_logging()
    try:
        outcome = execute(cfg, progress=lambda msg: typer.echo(f"[llem] {msg}", err=True))
    except ConfigError as exc:
        _err(str(exc))
        raise typer.Exit(2) from None
    except LlemError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    typer.echo(_summary(outcome))


def _summary(outcome: Any) -> str:
    r = outcome.result
    energy = f"{r.total_energy_j:.1f} J" if r.total_energy_j is not None else "not measured (no NVIDIA GPU)"
    per_tok = f"{r.avg_energy_per_token_j:.4g} J" if r.avg_energy_per_token_j is not None else "n/a"
    net = f"{r.energy.net_j:.1f} J" if r.energy and r.energy.net_j is not None else "n/a"
    lines = [
        f"model           {r.model} ({r.weights} weights, {r.precision}, {r.device})",
        f"tokens          {r.input_tokens} in, {r.output_tokens} out",
        f"energy          {energy} (net of idle: {net}, source: {r.energy_source})",
        f"energy/token    {per_tok}",
        f"throughput      {r.avg_tokens_per_second:.1f} tok/s over {r.total_inference_time_sec:.2f} s",
        f"result folder   {outcome.result_dir}",
        f"mlflow run      {outcome.run_id or 'not logged (--no-mlflow)'}",
    ]
    if r.warnings:
        lines.append(f"warnings        {len(r.warnings)} (see result.json)")
    return "\n".join(lines)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="[llem] %(levelname)s: %(message)s", stream=sys.stderr)


@app.command("log")
def log_saved(
    result_dir: Annotated[str, typer.Argument(help="A result folder (holds result.json and the trace).")],
    tracking_uri: Annotated[str | None, Opt(help="MLflow tracking URI.")] = None,
    experiment_name: Annotated[str | None, Opt(help="MLflow experiment name.")] = None,
    run_name: Annotated[str | None, Opt(help="MLflow run name.")] = None,
) -> None:
    """Log a saved result folder to MLflow (e.g. after the tracking server was unreachable)."""
    from pathlib import Path

    from llem_mlflow.recording import log_folder

    _setup_logging()
    try:
        run_id = log_folder(Path(result_dir), tracking_uri, experiment_name, run_name)
    except LlemError as exc:
        _err(str(exc))
        raise typer.Exit(1) from None
    typer.echo(f"mlflow run      {run_id}")


@app.command("config")
def show_config() -> None:
    """Show the GPUs NVML sees, whether energy can be measured, and backend versions."""
    from llem_mlflow.backend import backend_versions, cuda_available
    from llem_mlflow.device import try_open_session

    versions = backend_versions()
    typer.echo(f"llem-mlflow     {__version__}")
    typer.echo(f"backend pytorch torch {versions.get('torch')}, transformers {versions.get('transformers')}")
    typer.echo(
        f"CUDA            {'available' if cuda_available() else 'not available'}"
        f" (runtime {versions.get('cuda_runtime')})"
    )
    session, reason = try_open_session()
    if session is None:
        typer.echo(f"energy source   none ({reason})")
        return
    with session:
        gpus = session.all_gpus()
        typer.echo(f"energy source   nvml (driver {session.driver_version()}, {len(gpus)} GPU(s))")
        for g in gpus:
            limit = f"{g.power_limit_w:.0f} W" if g.power_limit_w else "?"
            typer.echo(f"GPU {g.nvml_index}           {g.name}  {g.uuid}  limit {limit}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
