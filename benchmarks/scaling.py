"""Scaling: time and memory of the result path at 1x, 10x and 100x trace length and prompt count.

Part 1, trace length (``--base-ticks`` samples per GPU at 100 ms, times each scale): build the trace in
memory, write timeseries.parquet, derive the trace-walking figures of a result (``energy.build_breakdown``
over the measured window and the idle median of ``assess.median_power_w``) and write result.json, then
``recording.log_folder`` with the objects in memory (as a run does) to a sqlite store (``--store
server``: a local tracking server, ``tests/mlflow_server.py``). A tiny result is logged first so that
importing mlflow is not counted at 1x.

Part 2, prompts (``--base-prompts`` times each scale): ``runner.execute`` end to end with
``tests.fakes.FakeBackend`` (instant generate, exact token counts) and one ``FakeDevice`` (counter =
wall clock x 300 W), logged to a sqlite store; the trace there is short (the run is fast), so this
isolates the per-prompt cost of the runner.

Each step runs twice: timed (wall seconds, and ``RSS peak +``: the highest resident set seen during the
step, sampled every 5 ms, minus the RSS at its start; includes native memory, can miss short spikes and
reads 0 when freed memory is reused), then under tracemalloc for ``py peak``, the peak of Python
allocations during the step (for "build trace": the in-memory size of the trace). log_folder gets the
second, traced pass only with ``--trace-logging`` (it is the slow step).

Growth is the log-log slope from 1x to the largest scale and between the two largest scales (1 = linear,
< 1 = better than linear); the verdict follows the second, where fixed costs no longer hide the
per-sample cost. Memory grows with trace length today because the whole trace is held in memory as
Python objects (and as MLflow metric objects while logging); the table says so when it happens.

Part 3, run length (``--run-lengths``, default 1 min to 24 h of measured time): a synthetic steady-state
run of 2 GPUs sampled every 15 ms (slow readings every 5th tick, as the sampler takes them): a 10 s idle
baseline, 3 cycles with 5 s cool-downs, one batch a second (8 rows, 64 new tokens, counter marks at
every batch edge), 10 s idle after. ``derive`` is what follows the sampler's stop in a real run:
``measure._trim_ramp`` per cycle, the sparse-trace checks, then ``runner._build_result`` (energy,
uncertainty, quality flags, phase split, steady state, latency; the environment snapshot included).
The table gives derive seconds per trace hour, raw and less the fixed cost (a 5 s run's derive),
which must stay flat from 1 min to 24 h; the trace's bytes per sample per GPU (tracemalloc, up to
``--traced-up-to``) and the RSS peak of build and derive. The old code (77c7c5f) can run this part
too: the script builds the trace with ``TraceSample`` objects when ``PowerTrace`` has no ``add``.

Rerun: ``python benchmarks/scaling.py [--base-ticks 360] [--base-prompts 16] [--scales 1,10,100]``;
part 3 alone: ``python benchmarks/scaling.py --run-length-only [--run-lengths 1m,8m,32m,2h,8h,24h]``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import bench_common as bc
import synthetic

from llem_mlflow.measure import energy
from llem_mlflow.measure.energy import CounterWindow
from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.protocols import GpuInfo
from llem_mlflow.results import assess
from llem_mlflow.results import files as artifacts
from llem_mlflow.tracking import recording

Step = dict[str, Any]


def gpu_infos(gpus: int) -> list[GpuInfo]:
    """Static facts of ``gpus`` H200-like GPUs."""
    return [
        GpuInfo(
            i,
            i,
            "NVIDIA H200",
            f"GPU-{i:08d}-aaaa-bbbb-cccc-dddddddddddd",
            None,
            150 << 30,
            700.0,
            True,
            "9.0",
        )
        for i in range(gpus)
    ]


def derive(trace: PowerTrace, ticks: int, gpus: int, folder: Path, experiment_id: str) -> None:
    """The trace-walking figures of a result, then the result itself and its result.json."""
    (i0, i1), (m0, m1) = synthetic.windows(ticks).values()
    energy_j = dict.fromkeys(range(gpus), 300.0 * (m1 - m0))
    idle = CounterWindow(i0, i1, dict.fromkeys(range(gpus), 72.0 * (i1 - i0)))
    energy.build_breakdown(CounterWindow(m0, m1, energy_j), idle, trace, gpu_infos(gpus))
    assess.median_power_w(trace, list(range(gpus)), (i0, i1))
    artifacts.write_result_json(synthetic.result(experiment_id, ticks, gpus), folder)


def step(name: str, action: Callable[[], Any], memory_pass: bool = True) -> Step:
    """Run one step timed (RSS sampled), then once more under tracemalloc for its Python peak."""
    with bc.measured() as cost:
        action()
    out = {"step": name, **vars(cost)}
    if memory_pass:
        with bc.measured(trace_memory=True) as traced:
            action()
        out["py_peak_b"] = traced.py_peak_b
    return out


def trace_scale(scale: int, args: Any, root: Path, uri: str) -> list[Step]:
    """Part 1 at one scale."""
    ticks, gpus = args.base_ticks * scale, args.gpus
    holder: dict[str, PowerTrace] = {}
    folder = root / f"trace-x{scale}"
    folder.mkdir(parents=True)
    exp_id = f"bench-scaling-x{scale}-{int(time.time())}"
    steps = [step("build trace", lambda: holder.update(t=synthetic.trace(ticks, gpus)))]
    trace = holder["t"]
    win = synthetic.windows(ticks)
    steps.append(step("write parquet", lambda: artifacts.write_trace_parquet(trace, folder, win)))
    steps.append(step("derive + result.json", lambda: derive(trace, ticks, gpus, folder, exp_id)))
    result = artifacts.read_result_json(folder / artifacts.RESULT_FILE)
    steps.append(
        step(
            "log_folder",
            lambda: recording.log_folder(folder, uri, "bench-scaling", None, (result, trace)),
            memory_pass=args.trace_logging,
        )
    )
    for s in steps:
        s.update(scale=scale, size=ticks * gpus)
    print(f"trace x{scale}: " + ", ".join(f"{s['step']} {s['wall_s']:.2f} s" for s in steps), flush=True)
    return steps


def warm_up(root: Path, uri: str) -> None:
    """Log a tiny result so that importing mlflow and creating the experiment are not counted."""
    folder = root / "warm-up"
    folder.mkdir(parents=True)
    trace = synthetic.trace(10)
    artifacts.write_trace_parquet(trace, folder, synthetic.windows(10))
    result = synthetic.result(f"bench-scaling-warm-{int(time.time())}", 10)
    artifacts.write_result_json(result, folder)
    recording.log_folder(folder, uri, "bench-scaling", None, (result, trace))


def prompts_scale(scale: int, args: Any, root: Path, uri: str) -> list[Step]:
    """Part 2 at one scale: runner.execute on fakes, end to end."""
    bc.repo_on_path()
    from llem_mlflow.config import ExperimentConfig
    from llem_mlflow.protocols import CudaDeviceId
    from llem_mlflow.run.execute import GpuSet, execute
    from tests.fakes import FakeBackend, FakeDevice

    n = args.base_prompts * scale
    cfg = ExperimentConfig.model_validate(
        {
            "n": n,
            "batch_size": 8,
            "max_input_tokens": 8,
            "max_output_tokens": 4,
            "baseline_s": 0.05,
            "sampling_interval_s": 0.015,
            "output_dir": str(root / f"prompts-x{scale}"),
            "tracking_uri": uri,
            "experiment_name": "bench-scaling-prompts",
        }
    )
    backend = FakeBackend(device="cuda", cuda_devices=[CudaDeviceId(0, "GPU-fake-0", None)])
    device = FakeDevice(energy_script=lambda: 300.0 * time.time(), power_w=300.0)
    gpus = lambda ids: GpuSet(devices=[device], driver_version="580.159.04")  # noqa: E731
    logging.getLogger("llem_mlflow").setLevel(logging.ERROR)  # the fakes' tiny windows warn on every run
    s = step("runner.execute", lambda: execute(cfg, backend=backend, gpus=gpus))
    s.update(scale=scale, size=n)
    print(f"prompts x{scale}: {n} prompts {s['wall_s']:.2f} s", flush=True)
    return [s]


def growth(steps: Sequence[Step], name: str, key: str, floor: float) -> tuple[float, float] | None:
    """Log-log slopes of ``key`` against size for one step: (smallest -> largest, the two largest).

    Values below ``floor`` count as ``floor``. The second slope is the marginal growth once fixed costs
    no longer dominate, and decides the verdict.
    """
    pts = sorted((s["size"], max(s[key], floor)) for s in steps if s["step"] == name and s[key] is not None)
    if len(pts) < 2:
        return None
    x, y = [p[0] for p in pts], [p[1] for p in pts]
    overall, top = bc.growth_exponent(x, y), bc.growth_exponent(x[-2:], y[-2:])
    return None if overall is None or top is None else (overall, top)


def verdict(slopes: tuple[float, float] | None) -> str:
    """Words for the slopes (the verdict follows the marginal one)."""
    if slopes is None:
        return "-"
    overall, top = slopes
    kind = "better than linear" if top < 0.9 else "linear" if top <= 1.15 else "WORSE than linear"
    return f"{overall:.2f} / {top:.2f} ({kind})"


def memory_note(steps: Sequence[Step], name: str) -> str:
    """'bounded' when the largest scale's Python peak is < 2x the smallest's (+1 MiB), else its growth."""
    pts = sorted(
        (s["size"], s["py_peak_b"]) for s in steps if s["step"] == name and s["py_peak_b"] is not None
    )
    if len(pts) < 2:
        return "not traced"
    (n0, v0), (n1, v1) = pts[0], pts[-1]
    if v1 <= 2 * v0 + (1 << 20):
        return "bounded"
    return f"grows: {v1 / 2**20:.1f} MiB at {n1}, {(v1 - v0) / (n1 - n0):.0f} B per extra sample/prompt"


def tables(steps: list[Step]) -> str:
    """Print the per-scale table and the growth table; return their text."""
    rows = [
        [
            s["part"],
            s["step"],
            f"x{s['scale']}",
            s["size"],
            f"{s['wall_s']:.3f}",
            bc.mib(s["py_peak_b"]),
            bc.mib(s["rss_peak_delta_b"]),
        ]
        for s in steps
    ]
    text = bc.show(
        "Per scale",
        ["part", "step", "scale", "samples/prompts", "wall s", "py peak MiB", "RSS peak + MiB"],
        rows,
    )
    names = list(dict.fromkeys((s["part"], s["step"]) for s in steps))
    grow = []
    for part, name in names:
        sub = [s for s in steps if s["part"] == part]
        grow.append(
            [
                part,
                name,
                verdict(growth(sub, name, "wall_s", 1e-6)),
                verdict(growth(sub, name, "py_peak_b", 1024)),
                memory_note(sub, name),
            ]
        )
    text += "\n\n" + bc.show(
        "Growth: log-log slope smallest->largest / between the two largest scales",
        ["part", "step", "time growth", "py peak growth", "memory"],
        grow,
    )
    return text


# ---------------------------------------------------------------- part 3: run length (steady-state derive)

RL_INTERVAL_S = 0.015
RL_GPUS = 2
RL_IDLE_S = 10.0
RL_CYCLES = 3
RL_COOLDOWN_S = 5.0
RL_BATCH_S = 1.0
RL_ROWS, RL_NEW_TOKENS, RL_PROMPT_TOKENS = 8, 64, 128
RL_RAMP_BATCHES = 2  # the first batches of each cycle run at ramp power (trimmed by steady state)
RL_FIXED_S = 5.0  # the run whose derive time is the fixed cost
T0_RL = 1_767_225_600.0
_SLOW = (41.0, 1980.0, 97.0, 8_000_000_000, 0, 1)


def parse_length(text: str) -> float:
    """'90s', '8m', '2h' -> seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def rl_segments(seconds: float) -> tuple[list[tuple[float, float, float]], list[tuple[float, float]]]:
    """(segments as (start, end, base power W), cycles as (start, end)) of a run measuring ``seconds``."""
    per_cycle = max(RL_BATCH_S, round(seconds / RL_CYCLES / RL_BATCH_S) * RL_BATCH_S)
    t = T0_RL
    segments = [(t, t + RL_IDLE_S, 72.25)]
    cycles = []
    t += RL_IDLE_S
    for k in range(RL_CYCLES):
        ramp_end = t + min(RL_RAMP_BATCHES * RL_BATCH_S, per_cycle)
        segments += [(t, ramp_end, 205.0), (ramp_end, t + per_cycle, 310.5)]
        cycles.append((t, t + per_cycle))
        t += per_cycle
        if k < RL_CYCLES - 1:
            segments.append((t, t + RL_COOLDOWN_S, 90.0))
            t += RL_COOLDOWN_S
    segments.append((t, t + RL_IDLE_S, 72.75))
    return segments, cycles


def rl_trace(segments: Sequence[tuple[float, float, float]]) -> Any:
    """The 15 ms trace of both GPUs (``PowerTrace.add`` when the code has it, else ``TraceSample``s)."""
    from llem_mlflow.measure.trace import TraceSample

    trace = PowerTrace(interval_s=RL_INTERVAL_S)
    fast = hasattr(trace, "add")
    samples = []
    k = 0
    for _start, end, base_w in segments:
        while T0_RL + k * RL_INTERVAL_S < end:
            t = T0_RL + k * RL_INTERVAL_S
            slow = _SLOW if k % 5 == 0 else None
            for gpu in range(RL_GPUS):
                at, power = t + gpu * 0.0007, base_w + gpu + (k % 7) * 0.37
                if fast:
                    trace.add(at, gpu, power, slow)
                else:
                    samples.append(TraceSample(at, gpu, power, *(slow or ())))
            k += 1
    return trace if fast else PowerTrace(interval_s=RL_INTERVAL_S, samples=samples)


def rl_cycles(
    segments: Sequence[tuple[float, float, float]], spans: Sequence[tuple[float, float]]
) -> list[Any]:
    """``measure.Cycle``s with a batch a second, counter marks at every edge (counter = segment power)."""
    from llem_mlflow.measure import stages as measure
    from llem_mlflow.measure.energy import CounterMark, CounterWindow
    from llem_mlflow.protocols import BatchStats

    step_s = (RL_BATCH_S - 0.03) / (RL_NEW_TOKENS - 1)
    stats = BatchStats(
        input_tokens=RL_ROWS * RL_PROMPT_TOKENS,
        output_tokens=RL_ROWS * RL_NEW_TOKENS,
        padded_input_len=RL_PROMPT_TOKENS,
        new_tokens=RL_NEW_TOKENS,
        batch_size=RL_ROWS,
        prefill_s=0.03,
        decode_step_s=tuple(step_s * (1 + 0.01 * (i % 5)) for i in range(RL_NEW_TOKENS - 1)),
    )

    def joules(at_s: float, gpu: int) -> float:  # the counter: base power integrated from T0_RL
        return sum((min(at_s, b) - a) * (w + gpu) for a, b, w in segments if a < at_s)

    cycles = []
    for index, (start, end) in enumerate(spans):
        n = round((end - start) / RL_BATCH_S)
        starts = [start + i * RL_BATCH_S for i in range(n)]
        marks = [CounterMark(at, {g: joules(at, g) for g in range(RL_GPUS)}) for at in [*starts, end]]
        window = CounterWindow(
            start, end, {g: marks[-1].energy_j[g] - marks[0].energy_j[g] for g in range(RL_GPUS)}
        )
        cycles.append(
            measure.Cycle(index=index, stats=[stats] * n, window=window, starts_s=starts, marks=marks)
        )
    return cycles


def rl_context(root: Path) -> tuple[Any, Any, Any]:
    """(runner context, backend, devices) of a steady-state run on two fake H200s."""
    bc.repo_on_path()
    from llem_mlflow.config import ExperimentConfig
    from llem_mlflow.protocols import CudaDeviceId, ModelFacts
    from llem_mlflow.results.identity import resolve
    from llem_mlflow.run import execute as runner
    from llem_mlflow.run import preflight
    from tests.fakes import FakeBackend, FakeDevice

    cfg = ExperimentConfig.model_validate(
        {
            "model": "gpt2",
            "n": 8,
            "batch_size": RL_ROWS,
            "cycles": RL_CYCLES,
            "sampling_interval_s": RL_INTERVAL_S,
            "measurement_methodology": "steady_state",
            "output_dir": str(root),
            "mlflow": False,
        }
    )
    ids = [CudaDeviceId(g, f"GPU-fake-{g}", None) for g in range(RL_GPUS)]
    backend = FakeBackend(device="cuda", cuda_devices=ids)
    devices = [FakeDevice(cuda_index=g, uuid=f"GPU-fake-{g}") for g in range(RL_GPUS)]
    loaded = backend.load()
    resolved = resolve(
        cfg,
        weights="random",
        precision="fp32",
        device="cuda",
        revision=None,
        dataset="synthetic",
        tokenizer=None,
        gpus=RL_GPUS,
    )
    plan = preflight.Plan(
        prompts=[], facts=ModelFacts(50257, 1024, "shipped config"), dataset="synthetic", tokenizer=None
    )
    gpu_set = runner.GpuSet(devices=devices, driver_version="580.159.04")
    start = datetime.now(timezone.utc)
    context = runner._Context(cfg, start, "bench-run-length", resolved, loaded, gpu_set, plan)
    return context, backend, devices


def rl_derive(run: dict[str, Any], context: Any, backend: Any, devices: Any) -> Any:
    """What follows the sampler's stop: trim each cycle's ramp, check trace gaps, build the result."""
    from llem_mlflow.measure import energy
    from llem_mlflow.measure import stages as measure
    from llem_mlflow.run import execute as runner

    trace = run["trace"]
    cycles = [measure._trim_ramp(c, trace, devices) for c in run["cycles"]]
    gpus = [d.info.cuda_index for d in devices]
    warnings = [w for c in cycles for w in energy.sparse_trace_warnings("cycle", c.window, trace, gpus)]
    m = measure.Measurement(
        cycles=cycles, idle=run["idle"], trace=trace, warnings=warnings, idle_after=run["idle_after"]
    )
    return runner._build_result(context, m, backend)


def rl_build(seconds: float) -> dict[str, Any]:
    """The synthetic run's trace, cycles, idle window and idle-after span."""
    from llem_mlflow.measure.energy import CounterWindow

    segments, spans = rl_segments(seconds)
    idle = CounterWindow(T0_RL, T0_RL + RL_IDLE_S, {g: (72.25 + g) * RL_IDLE_S for g in range(RL_GPUS)})
    after = (segments[-1][0], segments[-1][1])
    return {
        "trace": rl_trace(segments),
        "cycles": rl_cycles(segments, spans),
        "idle": idle,
        "idle_after": after,
    }


def run_length_point(label: str, args: Any, root: Path) -> Step:
    """Part 3 at one run length: build (timed; traced up to --traced-up-to), derive (timed; traced too)."""
    seconds = parse_length(label)
    traced = seconds <= parse_length(args.traced_up_to)
    context, backend, devices = rl_context(root)
    holder: dict[str, Any] = {}
    with bc.measured() as build:
        holder["run"] = rl_build(seconds)
    run = holder.pop("run")
    ticks = len(run["trace"].samples) / RL_GPUS
    out: Step = {
        "length": label,
        "measured_s": seconds,
        "samples_per_gpu": ticks,
        "trace_h": ticks * RL_INTERVAL_S / 3600,
        "batches": sum(len(c.stats) for c in run["cycles"]),
        "build_s": build.wall_s,
        "build_rss_peak_b": build.rss_peak_delta_b,
    }
    if traced:
        with bc.measured(trace_memory=True):
            import tracemalloc

            before = tracemalloc.get_traced_memory()[0]
            again = rl_trace(rl_segments(seconds)[0])
            out["trace_b"] = tracemalloc.get_traced_memory()[0] - before
        out["b_per_sample_gpu"] = out["trace_b"] / (ticks * RL_GPUS)
        del again
    costs = []
    for _ in range(3 if seconds <= 7200 else 1):  # up to 2 h: the best of 3 (noise on a shared machine)
        with bc.measured() as derive:
            result = rl_derive(run, context, backend, devices)
        costs.append(derive)
    derive = min(costs, key=lambda c: c.wall_s)
    out.update(derive_s=derive.wall_s, derive_rss_peak_b=max(c.rss_peak_delta_b or 0 for c in costs))
    out["steady_trimmed"] = result.steady_state.trimmed_batches if result.steady_state else None
    if traced:
        with bc.measured(trace_memory=True) as derive_traced:
            rl_derive(run, context, backend, devices)
        out["derive_py_peak_b"] = derive_traced.py_peak_b
    print(
        f"run length {label}: {ticks:,.0f} samples/GPU, build {build.wall_s:.1f} s, "
        f"derive {derive.wall_s:.2f} s",
        flush=True,
    )
    return out


def run_length_sweep(args: Any, root: Path) -> tuple[list[Step], str]:
    """Part 3 at every run length (after the fixed-cost run); the table's text."""
    labels = [x.strip() for x in args.run_lengths.split(",") if x.strip()]
    logging.getLogger("llem_mlflow").setLevel(logging.ERROR)  # short synthetic windows warn on every run
    fixed = run_length_point(f"{RL_FIXED_S:g}s", args, root)
    points = [run_length_point(label, args, root) for label in labels]
    return [fixed, *points], run_length_table(fixed, points)


def run_length_table(fixed: Step, points: Sequence[Step]) -> str:
    """Derive seconds per trace hour (raw and less the fixed cost), bytes per sample, memory."""
    rows = []
    for p in points:
        net = max(p["derive_s"] - fixed["derive_s"], 0.0)
        rows.append(
            [
                p["length"],
                f"{p['trace_h']:.3f}",
                f"{p['samples_per_gpu']:,.0f}",
                f"{p['batches']:,}",
                f"{p['build_s']:.1f}",
                f"{p['derive_s']:.3f}",
                f"{p['derive_s'] / p['trace_h']:.2f}",
                f"{net / p['trace_h']:.2f}",
                f"{p['b_per_sample_gpu']:.1f}" if "b_per_sample_gpu" in p else "-",
                bc.mib(p.get("derive_py_peak_b")),
                bc.mib(p["build_rss_peak_b"]),
                bc.mib(p["derive_rss_peak_b"]),
            ]
        )
    headers = [
        "run",
        "trace h",
        "samples/GPU",
        "batches",
        "build s",
        "derive s",
        "derive s/trace h",
        "net s/trace h",
        "B/sample/GPU",
        "derive py peak MiB",
        "build RSS+ MiB",
        "derive RSS+ MiB",
    ]
    title = (
        f"Run length: steady-state derive, {RL_GPUS} GPUs, {RL_INTERVAL_S * 1000:g} ms sampling "
        f"(fixed cost: a {fixed['length']} run derives in {fixed['derive_s']:.3f} s; net = derive - fixed)"
    )
    return bc.show(title, headers, rows)


def main() -> None:
    """Parse flags, run both parts at every scale, print the tables and write the JSON."""
    bc.quiet_env()
    p = bc.parser(__doc__, "scaling.json")
    p.add_argument("--base-ticks", type=int, default=360, help="trace samples per GPU at 1x (default 360)")
    p.add_argument("--base-prompts", type=int, default=16, help="prompts at 1x (default 16)")
    p.add_argument("--scales", default="1,10,100", help="comma list of multipliers (default 1,10,100)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs in the synthetic trace (default 1)")
    p.add_argument("--store", choices=["sqlite", "server"], default="sqlite", help="MLflow store")
    p.add_argument("--skip-prompts", action="store_true", help="only the trace-length part")
    p.add_argument("--trace-logging", action="store_true", help="also log once more under tracemalloc")
    p.add_argument("--run-lengths", default="1m,8m,32m,2h,8h,24h", help="part 3 run lengths (s, m, h)")
    p.add_argument("--traced-up-to", default="32m", help="part 3: tracemalloc passes up to this length")
    p.add_argument("--run-length-only", action="store_true", help="only part 3 (run length)")
    p.add_argument("--skip-run-length", action="store_true", help="parts 1 and 2 only")
    args = p.parse_args()
    if args.run_length_only:
        with tempfile.TemporaryDirectory(prefix="llem-scaling-") as tmp:
            points, text = run_length_sweep(args, Path(tmp))
        bc.write_json(args.out, "scaling", {"run_length": points, "table": text})
        return
    scales = [int(x) for x in args.scales.split(",")]
    bc.repo_on_path()
    from tests.mlflow_server import start_server, stop_server

    steps: list[Step] = []
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="llem-scaling-") as tmp, bc.working_dir(Path(tmp)):
        root = Path(tmp)
        proc, uri = (
            start_server(root / "server") if args.store == "server" else (None, f"sqlite:///{root}/m.db")
        )
        try:
            warm_up(root / "res", uri)
            steps += [dict(s, part="trace") for k in scales for s in trace_scale(k, args, root / "res", uri)]
            if not args.skip_prompts:
                steps += [
                    dict(s, part="prompts") for k in scales for s in run_prompts(k, args, root, uri, errors)
                ]
        finally:
            if proc is not None:
                stop_server(proc)
    text = tables(steps)
    points: list[Step] = []
    if not args.skip_run_length:
        with tempfile.TemporaryDirectory(prefix="llem-scaling-") as tmp:
            points, more = run_length_sweep(args, Path(tmp))
        text += "\n\n" + more
    payload = {"scales": scales, "store": args.store, "table": text, "steps": steps, "errors": errors}
    payload["run_length"] = points
    bc.write_json(args.out, "scaling", payload)


def run_prompts(scale: int, args: Any, root: Path, uri: str, errors: list[str]) -> list[Step]:
    """Part 2 at one scale; an error is recorded instead of raised."""
    try:
        return prompts_scale(scale, args, root, uri)
    except Exception as exc:  # the runner is injectable but still evolving: report, do not crash
        errors.append(f"prompts x{scale}: {type(exc).__name__}: {exc}")
        print(errors[-1], flush=True)
        return []


if __name__ == "__main__":
    main()
