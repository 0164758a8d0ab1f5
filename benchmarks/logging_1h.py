"""Logging a 1-hour result: writing its Parquet trace and logging the folder to a real MLflow server.

Builds a synthetic trace of ``--ticks`` samples per GPU (default 36,000: one hour at 100 ms) on ``--gpus``
GPUs and a valid ExperimentResult whose windows span it (``synthetic.py``), writes timeseries.parquet and
result.json, starts a local tracking server (``tests/mlflow_server.py``: sqlite store, proxied artifacts,
the same helper the tests use) and logs the folder with ``recording.log_folder``. Steps, each on a fresh
folder and experiment id (a folder already logged is a no-op by design):

1. ``cold``: the first log_folder of the process, with the objects in memory (as a run does); includes
   importing mlflow and creating the experiment;
2. ``warm``: the same path again (what logging itself costs once mlflow is loaded);
3. ``from disk`` (with ``--from-disk``): ``log_folder`` reading result.json and the trace back (the
   ``llem-mlflow log`` path);
4. ``warm, traced``: step 2 under tracemalloc (slower; only for its memory peak).

Memory (client process only; the server is another process): ``py peak`` is tracemalloc's peak of
Python allocations during the step (native Arrow buffers are not included); ``RSS peak +`` is the highest
resident set seen during the step (sampled every 5 ms from /proc/self/statm) minus the RSS at its start;
``RSS HWM +`` is how much the process's resident-set high-water mark (getrusage ru_maxrss) rose during the
step (0 when it stayed below an earlier peak). The trace itself is held in
memory (a list of dataclasses), so memory grows with trace length: see ``scaling.py``.

Target: the 1-hour trace logged in <= 3 s (warm step) with bounded memory.

Rerun: ``python benchmarks/logging_1h.py [--gpus 1] [--ticks 36000] [--store sqlite] [--from-disk]``.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import bench_common as bc
import synthetic

from llem_mlflow.measure.trace import PowerTrace
from llem_mlflow.results import files as artifacts
from llem_mlflow.results.schema import ExperimentResult
from llem_mlflow.tracking import recording

TARGET_S = 3.0


def prepare(root: Path, name: str, ticks: int, gpus: int, trace: PowerTrace) -> tuple[Path, ExperimentResult]:
    """A result folder ``root/name`` holding result.json and the trace; returns (folder, result)."""
    result = synthetic.result(f"bench-{name}", ticks, gpus)
    folder = artifacts.result_dir(root, result.experiment_id)
    artifacts.write_trace_parquet(trace, folder, synthetic.windows(ticks))
    artifacts.write_result_json(result, folder)
    return folder, result


def step(name: str, action: Callable[[], Any], traced: bool = False) -> dict[str, Any]:
    """Run one step and record its cost."""
    with bc.measured(trace_memory=traced) as cost:
        action()
    print(f"{name}: {cost.wall_s:.2f} s", flush=True)
    return {"step": name, **vars(cost)}


def run(args: Any, root: Path, uri: str) -> list[dict[str, Any]]:
    """All steps against tracking URI ``uri``."""
    ticks, gpus = args.ticks, args.gpus
    steps = []
    holder: dict[str, PowerTrace] = {}
    steps.append(step("build trace in memory", lambda: holder.update(t=synthetic.trace(ticks, gpus)), True))
    trace = holder["t"]
    trace_dir = root / "parquet-only"
    trace_dir.mkdir(parents=True)
    steps.append(
        step("write timeseries.parquet", lambda: artifacts.write_trace_parquet(trace, trace_dir, {}))
    )
    size = (trace_dir / artifacts.TRACE_FILE).stat().st_size
    plan = [("log_folder cold (imports mlflow)", False, False), ("log_folder warm", False, False)]
    plan += [("log_folder from disk", True, False)] if args.from_disk else []
    plan += [("log_folder warm, traced", False, True)]
    for name, from_disk, traced in plan:
        folder, result = prepare(root, re.sub(r"[^A-Za-z0-9._-]+", "-", name), ticks, gpus, trace)
        loaded = None if from_disk else (result, trace)
        steps.append(
            step(name, partial(recording.log_folder, folder, uri, "bench-logging", None, loaded), traced)
        )
    steps[1]["parquet_bytes"] = size
    return steps


def rows(steps: list[dict[str, Any]]) -> list[list[Any]]:
    """Table rows of the steps."""
    out = []
    for s in steps:
        judged = s["step"] == "log_folder warm"
        verdict = ("yes" if s["wall_s"] <= TARGET_S else "NO") if judged else "-"
        out.append(
            [
                s["step"],
                f"{s['wall_s']:.2f}",
                f"{s['cpu_s']:.2f}",
                bc.mib(s["py_peak_b"]),
                bc.mib(s["rss_peak_delta_b"]),
                bc.mib(s["rss_hwm_delta_b"]),
                verdict,
            ]
        )
    return out


def main() -> None:
    """Parse flags, start the server, run the steps, print the table and write the JSON."""
    bc.quiet_env()
    p = bc.parser(__doc__, "logging_1h.json")
    p.add_argument(
        "--ticks", type=int, default=36_000, help="samples per GPU (default 36000 = 1 h at 100 ms)"
    )
    p.add_argument("--gpus", type=int, default=1, help="GPUs in the trace (default 1)")
    p.add_argument(
        "--store", choices=["server", "sqlite"], default="server", help="HTTP server or sqlite file"
    )
    p.add_argument("--from-disk", action="store_true", help="also log a folder read back from disk")
    args = p.parse_args()
    bc.repo_on_path()
    from tests.mlflow_server import start_server, stop_server

    with tempfile.TemporaryDirectory(prefix="llem-logging-1h-") as tmp, bc.working_dir(Path(tmp)):
        root = Path(tmp)
        proc, uri = (
            start_server(root / "server") if args.store == "server" else (None, f"sqlite:///{root}/m.db")
        )
        try:
            steps = run(args, root / "results", uri)
        finally:
            if proc is not None:
                stop_server(proc)
    hours = args.ticks * 0.1 / 3600
    title = f"Logging a {hours:.2g} h trace ({args.ticks} samples x {args.gpus} GPU, {args.store})"
    headers = [
        "step",
        "wall s",
        "CPU s",
        "py peak MiB",
        "RSS peak + MiB",
        "RSS HWM + MiB",
        f"<= {TARGET_S} s",
    ]
    text = bc.show(title, headers, rows(steps))
    payload = {"ticks": args.ticks, "gpus": args.gpus, "store": args.store, "table": text, "steps": steps}
    bc.write_json(args.out, "logging_1h", payload)


if __name__ == "__main__":
    main()
