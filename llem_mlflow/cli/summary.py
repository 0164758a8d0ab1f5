"""What a run measured, as the CLI prints it after the run: ``summary`` and its ``stages`` line.

One ``label  value`` row per figure (model, workload, time, energy, per-token energy, cycles with their
95 % intervals (a server run's per-cycle TTFT p50, ITL p50 and net J/request among them), MFU and
memory-bandwidth utilization, the methods that ran, warnings, stages), then the result folder and the
MLflow run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llem_mlflow.cli.console import line, with_interval
from llem_mlflow.cli.serving_summary import serving_lines

if TYPE_CHECKING:
    from llem_mlflow.results.schema import Timings
    from llem_mlflow.run.execute import Outcome


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


def _quality_words(q: Any) -> str:
    if q.value is None:
        return f"{q.metric} not taken: {q.note}"
    text = f"{q.metric} {q.value:,.4g} on the held-out text ({q.tokens:,} tokens, window {q.window})"
    return text + (f"; {q.note}" if q.note else "")


def _model_words(r: Any) -> str:
    if r.serving is not None:
        return f"{r.model} (served as {r.serving.served_model!r}; precision {r.precision}; GPUs: {r.device})"
    return f"{r.model} ({r.weights} weights, {r.precision}, {r.device})"


def _unit(r: Any) -> str:
    return "prompts" if r.serving is None else "requests per cycle"


def _workload(r: Any) -> str:
    """``32 prompts x 12 passes per cycle: ...``: the passes only when the prompt set runs more than once."""
    passes = r.warmup.passes if r.warmup is not None else 1
    times = f" x {passes} passes per cycle" if passes > 1 else ""
    return f"{r.config.n} {_unit(r)}{times}: {r.input_tokens:,} tokens in, {r.output_tokens:,} out"


def _gpu_default_lines(r: Any) -> list[str]:
    from llem_mlflow.config_gpu import describe

    if not r.gpu_defaults:
        return []
    return [line("GPU defaults", f"{describe(r.gpu_defaults)} (set any of them to override)")]


def summary(outcome: Outcome) -> str:
    """What a run measured, one ``label  value`` per line; the last lines name its folder and run."""
    r = outcome.result
    lines = [
        line("model", _model_words(r)),
        line("workload", _workload(r)),
        *_gpu_default_lines(r),
        line(
            "time",
            f"{r.total_inference_time_sec:.2f} s measured, {r.avg_tokens_per_second:,.1f} output tokens/s",
        ),
    ]
    e = r.energy
    if e is not None and e.unknown_gpu_windows:
        lines.append(line("energy", _incomplete_energy(e)))
    elif r.total_energy_j is None or e is None:
        lines.append(line("energy", f"not measured: {_not_measured_reason(r.warnings)}"))
    else:
        gpus = f"{len(e.per_gpu)} GPU" + ("s" if len(e.per_gpu) != 1 else "")
        edges = f" +- {_joules(e.edge_uncertainty_j)}" if e.edge_uncertainty_j is not None else ""
        lines.append(line("energy", f"{_joules(r.total_energy_j)}{edges} on {gpus} ({r.energy_source})"))
        if e.net_j is not None and e.idle_power_w is not None:
            lines.append(line("net of idle", f"{_joules(e.net_j)} (idle {e.idle_power_w:,.1f} W)"))
        if r.avg_energy_per_token_j is not None:
            lines.append(line("energy/token", f"{_joules(r.avg_energy_per_token_j)} per output token"))
    lines.extend(serving_lines(r))
    if r.quality is not None:
        lines.append(line("quality", _quality_words(r.quality)))
    lines.extend(_cycle_lines(r))
    lines.extend(_roof_lines(r))
    lines.extend(_method_lines(r))
    if r.warnings:
        lines.append(line("warnings", f"{len(r.warnings)} (see result.json)"))
    if outcome.timings is not None:
        lines.append(line("stages", stages_line(outcome.timings)))
    lines.append(line("result folder", str(outcome.result_dir)))
    if outcome.run_id:
        run = outcome.run_id
    elif outcome.tracking_error:
        run = "not logged (see the error below)"
    else:
        run = "not logged (--no-mlflow)"
    lines.append(line("mlflow run", run))
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
    c = r.cycles
    if c is None or c.n < 2:
        return []
    figures = [
        ("J/token", c.energy_per_output_token_j_ci95, 4, 1.0),
        ("net J/token", c.net_energy_per_output_token_j_ci95, 4, 1.0),
        ("tok/s", c.output_tokens_per_s_ci95, 3, 1.0),
        *_serving_cycle_figures(r),
    ]
    lines = [line("cycles", f"{c.n} (mean [95% interval], CV across cycles)")]
    for name, interval, digits, scale in figures:
        if interval is None or interval.n < 2:
            continue
        low, high = interval.ci95_low, interval.ci95_high
        text = with_interval(
            interval.mean * scale,
            None if low is None else low * scale,
            None if high is None else high * scale,
            digits,
        )
        cv = f"{interval.cv_pct:.2f}%" if interval.cv_pct is not None else "n/a"
        rests = f", {interval.n} of {c.n} cycles" if interval.left_out else ""
        bounds = "" if interval.ci95_low is not None else f" (no interval: {_why_no_bounds(interval.n)})"
        lines.append(line(f"  {name}", f"{text}{bounds}, CV {cv}{rests}"))
    return lines


def _serving_cycle_figures(r: Any) -> list[tuple[str, Any, int, float]]:
    """A server run's per-cycle TTFT p50, ITL p50 (in ms) and net J/request; none for older results."""
    ci = r.serving.cycle_intervals if r.serving is not None else None
    if ci is None:
        return []
    return [
        ("TTFT p50 ms", ci.ttft_p50_s, 3, 1000.0),
        ("ITL p50 ms", ci.itl_p50_s, 3, 1000.0),
        ("net J/request", ci.net_per_request_j, 4, 1.0),
    ]


def _roof_lines(r: Any) -> list[str]:
    """How far from the hardware's roofs: MFU over the window, memory-bandwidth utilization in decode."""
    c = r.compute
    parts = []
    if c is not None and c.mfu is not None:
        parts.append(f"MFU {c.mfu * 100:.2f}%")
    if c is not None and c.memory_bandwidth_util is not None:
        parts.append(f"memory bandwidth {c.memory_bandwidth_util * 100:.1f}% of peak in decode")
    return [line("utilization", ", ".join(parts))] if parts else []


def _method_lines(r: Any) -> list[str]:
    """Steady-state trimming, isolated prefill, the power settle warm-up and idle settle, where they ran."""
    lines = []
    if r.steady_state is not None:
        st = r.steady_state
        trimmed = ", ".join(str(t) for t in st.trimmed_batches)
        lines.append(line("steady state", f"ramp batches left out per cycle: {trimmed}"))
        if st.in_window_read_s is not None and st.in_window_reads is not None and st.in_window_read_pct:
            cost = f"{sum(st.in_window_reads)} in {sum(st.in_window_read_s) * 1000:,.1f} ms"
            share = f"up to {max(st.in_window_read_pct):.2f}% of a window"
            lines.append(line("", f"counter reads inside the windows: {cost} ({share})"))
    p = r.prefill_isolated
    if p is not None:
        energy = f"{_joules(p.per_pass_j)} per pass, " if p.per_pass_j is not None else ""
        per_token = f", {_joules(p.per_input_token_j)}/input token" if p.per_input_token_j is not None else ""
        lines.append(line("prefill alone", f"{energy}{p.per_pass_s * 1000:,.1f} ms per pass{per_token}"))
    if r.warmup is not None and r.warmup.power_settled is not None:
        lines.append(line("warm-up", _power_settle_words(r)))
    idle = r.idle_settle
    if idle is not None:
        state = "settled" if idle.settled else "still drifting (cap reached)"
        lines.append(line("idle settle", f"{state} after {idle.waited_s:.1f} s, {idle.last_w:,.1f} W"))
    return lines


def _power_settle_words(r: Any) -> str:
    """``power settled after 3 stretches (300.0 W -> 352.0 W)``, still drifting, or ended by a failed read."""
    from llem_mlflow.measure.power_settle import POWER_READ_FAILED

    p, seconds = r.warmup.power_w, r.warmup.power_s or 0.0
    if r.warmup.power_settled:
        return f"power settled after {len(p)} stretches ({p[0]:,.1f} W -> {p[-1]:,.1f} W)"
    if len(p) < 2 or any(w.startswith(POWER_READ_FAILED) for w in r.warnings):
        return f"power settle ended after {seconds:.0f} s: an energy counter read failed (see the warnings)"
    return f"power still drifting after {seconds:.0f} s ({p[-2]:,.1f} W, {p[-1]:,.1f} W; see the warnings)"


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
