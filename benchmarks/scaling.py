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

Rerun: ``python benchmarks/scaling.py [--base-ticks 360] [--base-prompts 16] [--scales 1,10,100]``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bench_common as bc
import synthetic

from llem_mlflow import artifacts, assess, energy, recording
from llem_mlflow.energy import CounterWindow
from llem_mlflow.protocols import GpuInfo
from llem_mlflow.trace import PowerTrace

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
    from llem_mlflow.runner import GpuSet, execute
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
    args = p.parse_args()
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
    payload = {"scales": scales, "store": args.store, "table": text, "steps": steps, "errors": errors}
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
