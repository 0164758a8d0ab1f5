"""Start-up cost: wall time of ``python -c "import llem_mlflow"`` and of ``llem-mlflow --help``.

Each command runs ``--runs`` times (default 5) as a fresh subprocess after one unrecorded run (which
warms the file cache); the median and min/max are reported, beside a bare ``python -c pass`` for the
interpreter's own start-up. A separate child per command then lists which heavy modules (torch,
transformers, mlflow, pynvml, pyarrow, plus numpy/pandas for information) ended up in ``sys.modules``:
for ``--help`` that child calls ``llem_mlflow.cli.app.main`` with ``sys.argv = ["llem-mlflow", "--help"]``.

Targets: ``import llem_mlflow`` <= 0.3 s and ``--help`` <= 0.5 s, with none of torch, transformers,
mlflow, pynvml or pyarrow imported.

Rerun: ``python benchmarks/import_time.py [--runs 5]``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_common as bc

HEAVY = ("torch", "transformers", "mlflow", "pynvml", "pyarrow")
INFO = ("numpy", "pandas", "pydantic", "typer", "rich", "yaml")
TARGETS = {"import": 0.3, "help": 0.5}

_REPORT = (
    "import json, sys\n"
    "mods = {m: m in sys.modules for m in %r}\n"
    "print('LLEM_MODULES=' + json.dumps(mods), file=sys.__stderr__)\n"
)
_HELP_CHILD = (
    "import sys\n"
    "sys.argv = ['llem-mlflow', '--help']\n"
    "from llem_mlflow.cli.app import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
)


def cli_path() -> str:
    """The ``llem-mlflow`` console script next to this interpreter, else the one on PATH."""
    beside = Path(sys.executable).with_name("llem-mlflow")
    found = str(beside) if beside.exists() else shutil.which("llem-mlflow")
    if found is None:
        raise SystemExit("llem-mlflow is not installed in this environment (pip install -e .)")
    return found


def wall_times(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Wall seconds of ``runs`` subprocess runs of ``cmd`` (after one unrecorded run)."""
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def modules_after(code: str, env: dict[str, str]) -> dict[str, bool]:
    """Which of HEAVY + INFO a child running ``code`` had imported when it finished."""
    script = code + _REPORT % ((*HEAVY, *INFO),)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False, timeout=120
    )
    for line in proc.stderr.splitlines():
        if line.startswith("LLEM_MODULES="):
            loaded: dict[str, bool] = json.loads(line.split("=", 1)[1])
            return loaded
    raise RuntimeError(f"child failed (rc {proc.returncode}): {proc.stderr[-2000:]}")


def measure(runs: int) -> list[dict[str, Any]]:
    """The three commands: bare interpreter, import, --help."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    cases = [
        ("python -c pass", [sys.executable, "-c", "pass"], None, None),
        (
            "import llem_mlflow",
            [sys.executable, "-c", "import llem_mlflow"],
            "import llem_mlflow\n",
            "import",
        ),
        ("llem-mlflow --help", [cli_path(), "--help"], _HELP_CHILD, "help"),
    ]
    out = []
    for name, cmd, child, target in cases:
        times = wall_times(cmd, runs, env)
        mods = modules_after(child, env) if child else {}
        heavy = sorted(m for m in HEAVY if mods.get(m))
        median = bc.spread(times)["median"]
        out.append(
            {
                "case": name,
                "command": cmd,
                "wall_s": bc.spread(times),
                "target_s": TARGETS.get(target or ""),
                "meets_target": None if target is None else median <= TARGETS[target] and not heavy,
                "heavy_modules_imported": heavy,
                "other_modules_imported": sorted(m for m in INFO if mods.get(m)),
            }
        )
    return out


def main() -> None:
    """Parse flags, measure, print the table and write the JSON."""
    bc.quiet_env()
    p = bc.parser(__doc__, "import_time.json")
    p.add_argument("--runs", type=int, default=5, help="recorded runs per command (default 5)")
    args = p.parse_args()
    cases = measure(args.runs)
    rows = [
        [
            c["case"],
            f"{c['wall_s']['median']:.3f}",
            f"{c['wall_s']['min']:.3f}-{c['wall_s']['max']:.3f}",
            "-" if c["target_s"] is None else f"<= {c['target_s']}",
            ", ".join(c["heavy_modules_imported"]) or ("none" if c["target_s"] else "-"),
            ", ".join(c["other_modules_imported"]) or "-",
            {True: "yes", False: "NO", None: "-"}[c["meets_target"]],
        ]
        for c in cases
    ]
    headers = ["command", "median s", "min-max s", "target", "heavy imported", "also imported", "meets"]
    text = bc.show(f"Start-up time (median of {args.runs} subprocess runs)", headers, rows)
    bc.write_json(args.out, "import_time", {"runs": args.runs, "table": text, "cases": cases})


if __name__ == "__main__":
    main()
