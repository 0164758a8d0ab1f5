"""Tool overhead: wall time of a real ``llem-mlflow run`` minus its measured windows, split by stage.

Runs the installed CLI as a subprocess (``--trials`` times) in a temporary folder with its own sqlite
MLflow store, then reads the result folder. When result.json has a ``timings`` block it is printed as
is; the stage split below is always derived from epoch timestamps, so it works either way:

* launch -> ``start_time``: interpreter start, imports, CLI parsing, config;
* ``start_time`` -> first window: checks, model load (``model_load_time_sec``), NVML, warm-up;
* gaps between the windows (``result.windows``: idle baseline, measured cycles, idle after);
* last window -> ``end_time``: derived figures (energy, intervals, flags, environment);
* ``end_time`` -> result.json mtime: writing timeseries.parquet and result.json;
* result.json -> mlflow_run.json mtime: MLflow logging; then -> process exit: interpreter shut-down.

"Overhead" = wall - the measured window (``measure``) - the idle baseline (``idle``), the issue's
definition: the idle after the last cycle and the isolated prefill count as overhead (``wall - every window``
is printed too). Target (default gpt2 run on one H200): overhead <= 12 s.

Rerun: ``python benchmarks/tool_overhead.py`` (CPU: llem/tiny-gpt2, tiny workload) or
``python benchmarks/tool_overhead.py --gpu --trials 3`` (GPU: the default gpt2 run, random weights);
extra CLI flags go after ``--``, e.g. ``-- --n 64 --batch-size 16``.

Before/after: ``--baseline-tree DIR`` runs the same command with ``PYTHONPATH=DIR`` (another checkout, e.g.
``git worktree add --detach /tmp/base HEAD``) and this tree alternately (old new, new old, ...), ``--trials``
runs of each, and prints the medians of both and their difference, stage by stage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import bench_common as bc

CPU_ARGS = [
    "--model",
    "llem/tiny-gpt2",
    "--weights",
    "random",
    "--device",
    "cpu",
    "--n",
    "8",
    "--batch-size",
    "4",
    "--max-input-tokens",
    "16",
    "--max-output-tokens",
    "16",
]
GPU_ARGS = ["--model", "gpt2", "--weights", "random", "--device", "cuda"]
TARGET_S = 12.0


def cli_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m llem_mlflow``."""
    beside = Path(sys.executable).with_name("llem-mlflow")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "llem_mlflow"]


def run_once(args: list[str], workdir: Path, tree: str | None = None) -> tuple[float, float, Path, str]:
    """Run the CLI once in ``workdir`` (with ``PYTHONPATH=tree`` when given: another checkout's code);
    returns (launch epoch, exit epoch, result folder, output tail)."""
    out_dir = workdir / "results"
    cmd = [*cli_command(), "run", *args, "--output-dir", str(out_dir)]
    cmd += ["--tracking-uri", f"sqlite:///{workdir / 'mlflow.db'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    if tree:  # absolute: the CLI runs in ``workdir``
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(Path(tree).resolve()), os.environ.get("PYTHONPATH")) if p
        )
    launch = time.time()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    exit_s = time.time()
    output = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode != 0:
        raise RuntimeError(f"llem-mlflow run failed (rc {proc.returncode}):\n{output}")
    folders = sorted(p.parent for p in out_dir.glob("*/result.json"))
    if len(folders) != 1:
        raise RuntimeError(f"expected one result folder under {out_dir}, found {folders}")
    return launch, exit_s, folders[0], output


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def stages(launch: float, exit_s: float, folder: Path) -> dict[str, Any]:
    """The stage split of one run (seconds), from result.json and the files' mtimes."""
    result = json.loads((folder / "result.json").read_text())
    windows = sorted((w["start_s"], w["end_s"], name) for name, w in result["windows"].items())
    start, end = _epoch(result["start_time"]), _epoch(result["end_time"])
    json_written = (folder / "result.json").stat().st_mtime
    record = folder / "mlflow_run.json"
    logged = record.stat().st_mtime if record.exists() else json_written
    split: dict[str, float] = {
        "startup (imports, CLI, config)": start - launch,
        "checks + load + warm-up": windows[0][0] - start,
        "  of which model load": float(result.get("model_load_time_sec") or 0.0),
    }
    for (_, a_end, a), (b_start, _, b) in zip(windows, windows[1:], strict=False):
        split[f"between {a} and {b}"] = b_start - a_end
    split["derived figures"] = end - windows[-1][1]
    split["write trace + result.json"] = json_written - end
    split["MLflow logging"] = logged - json_written
    split["exit"] = exit_s - logged
    measured = {name: e - s for s, e, name in windows}
    wall = exit_s - launch
    return {
        "folder": str(folder),
        "wall_s": wall,
        "windows_s": measured,
        "stages_s": split,
        "overhead_s": wall - measured.get("measure", 0.0) - measured.get("idle", 0.0),
        "beyond_windows_s": wall - sum(measured.values()),
        "timings": result.get("timings"),
    }


def flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    """A nested ``timings`` block as (dotted key, value) pairs."""
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in flatten(f"{prefix}.{k}" if prefix else k, v)]
    return [(prefix, value)]


def show_trial(i: int, t: dict[str, Any]) -> str:
    """Print one trial's stage table (and its ``timings`` block when present), named by its tree."""
    rows = [[name, f"{s:.2f}"] for name, s in t["stages_s"].items()]
    rows += [[f"[window {name}]", f"{s:.2f}"] for name, s in t["windows_s"].items()]
    rows += [["wall", f"{t['wall_s']:.2f}"], ["wall - every window", f"{t['beyond_windows_s']:.2f}"]]
    rows += [["overhead = wall - measure - idle", f"{t['overhead_s']:.2f}"]]
    text = bc.show(f"Trial {i} ({t['variant']}): stages (s)", ["stage", "seconds"], rows)
    if t["timings"]:
        text += "\n" + bc.show("result.json timings", ["key", "value"], flatten("", t["timings"]))
    return text


def trial(i: int, run_args: list[str], tree: str | None, label: str) -> tuple[dict[str, Any], str]:
    """One run of the CLI in a fresh temporary folder (own sqlite store), with its stage table."""
    with tempfile.TemporaryDirectory(prefix="llem-tool-overhead-") as tmp:
        launch, exit_s, folder, _ = run_once(run_args, Path(tmp), tree)
        t = {**stages(launch, exit_s, folder), "variant": label}
    return t, show_trial(i, t)


def per_stage(trials: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds of each stage of the ``timings`` blocks, with wall and overhead (stages that ran)."""
    keys = ["wall_s", "overhead_s", "beyond_windows_s"]
    out = {k: bc.spread([t[k] for t in trials])["median"] for k in keys}
    names = {k for t in trials for k, v in (t["timings"] or {}).items() if isinstance(v, (int, float))}
    for name in sorted(names):
        values = [float((t["timings"] or {}).get(name) or 0.0) for t in trials]
        out[f"timings.{name}"] = bc.spread(values)["median"]
    return out


def paired_table(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> str:
    """Medians of the baseline tree and this tree, stage by stage, and new - old."""
    a, b = per_stage(old), per_stage(new)
    rows = [[k, f"{a.get(k, 0.0):.2f}", f"{b.get(k, 0.0):.2f}", f"{b.get(k, 0.0) - a.get(k, 0.0):+.2f}"]
            for k in dict.fromkeys([*a, *b])]  # fmt: skip
    title = f"Before/after: medians of {len(old)} + {len(new)} alternated runs (s; a stage not run: 0)"
    return bc.show(title, ["stage", "baseline tree", "this tree", "this - baseline"], rows)


def summary(trials: list[dict[str, Any]]) -> str:
    """The overhead over this tree's trials against the target."""
    over = [t["overhead_s"] for t in trials]
    return bc.show(
        "Tool overhead over trials (this tree)",
        ["trials", "wall s (median)", "windows s (median)", "overhead s (median)", "min-max", "target"],
        [
            [
                len(trials),
                f"{bc.spread([t['wall_s'] for t in trials])['median']:.2f}",
                f"{bc.spread([sum(t['windows_s'].values()) for t in trials])['median']:.2f}",
                f"{bc.spread(over)['median']:.2f}",
                f"{min(over):.2f}-{max(over):.2f}",
                f"<= {TARGET_S} (gpt2 default, H200)",
            ]
        ],
    )


def main() -> None:
    """Parse flags, run the trials (alternating with the baseline tree when given), print and write JSON."""
    bc.quiet_env()
    p = bc.parser(__doc__, "tool_overhead.json")
    p.add_argument("--gpu", action="store_true", help="the default gpt2 run on CUDA (random weights)")
    p.add_argument("--trials", type=int, default=1, help="runs of the CLI (of each tree; default 1)")
    p.add_argument("--baseline-tree", help="another checkout to compare with, run as PYTHONPATH=DIR")
    p.add_argument("extra", nargs="*", help="extra `llem-mlflow run` flags, after --")
    args = p.parse_args()
    run_args = [*(GPU_ARGS if args.gpu else CPU_ARGS), *args.extra]
    runs: dict[str | None, list[dict[str, Any]]] = {None: [], args.baseline_tree: []}
    texts = []
    for i in range(args.trials):
        trees = [args.baseline_tree, None] if args.baseline_tree else [None]
        for tree in trees if i % 2 == 0 else trees[::-1]:  # old new, new old, ...
            t, text = trial(i, run_args, tree, "baseline tree" if tree else "this tree")
            runs[tree].append(t)
            texts.append(text)
    new, old = runs[None], runs[args.baseline_tree] if args.baseline_tree else []
    texts.append(summary(new))
    if old:
        texts.append(paired_table(old, new))
    payload = {
        "cli_args": run_args,
        "baseline_tree": args.baseline_tree,
        "trials": new,
        "baseline_trials": old,
        "table": "\n\n".join(texts),
    }
    bc.write_json(args.out, "tool_overhead", payload)


if __name__ == "__main__":
    main()
