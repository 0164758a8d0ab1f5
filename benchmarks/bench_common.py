"""Shared helpers of the scripts in ``benchmarks/``: environment capture, statistics, tables, JSON output.

Not a benchmark itself. Each script runs as ``python benchmarks/<name>.py`` (this folder is then on
``sys.path``); ``repo_on_path()`` also puts the repository root there so ``tests.fakes`` and
``tests.mlflow_server`` (plain modules, no pytest needed) can be imported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def repo_on_path() -> None:
    """Put the repository root on ``sys.path`` (for ``tests.fakes``, ``tests.mlflow_server``)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def quiet_env() -> None:
    """The offline/quiet settings every benchmark runs with (set unless the caller set them)."""
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        "TOKENIZERS_PARALLELISM": "false",
    }.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    """Run the body in ``path`` (a sqlite MLflow store puts its artifacts in ./mlruns of the CWD)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def parser(doc: str | None, default_out: str) -> argparse.ArgumentParser:
    """An argument parser whose description is the module docstring, with ``--out``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=default_out, help=f"JSON output file (default: {default_out})")
    return p


# --------------------------------------------------------------------------------- environment


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def gpu_facts() -> dict[str, Any]:
    """GPU names and driver from ``nvidia-smi`` (no import of torch or pynvml); empty without a GPU."""
    query = ["nvidia-smi", "--query-gpu=name,driver_version,power.limit", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]
    if not rows:
        return {}
    return {
        "gpus": [r[0] for r in rows],
        "driver_version": rows[0][1],
        "power_limit": rows[0][2] if len(rows[0]) > 2 else None,
    }


def environment() -> dict[str, Any]:
    """Date, versions, CPU, GPU (when present), git commit and the exact command line."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        ).stdout

    commit = git("rev-parse", "--short", "HEAD").strip()
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "mlflow": _version("mlflow"),
        "pyarrow": _version("pyarrow"),
        "llem_mlflow": _version("llem-mlflow"),
        "git_commit": commit or None,
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip()) if commit else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        **gpu_facts(),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
    }


def write_json(path: str | Path, benchmark: str, payload: dict[str, Any]) -> Path:
    """Write ``{"benchmark", "environment", **payload}`` as indented JSON; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": benchmark, "environment": environment(), **payload}
    target.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"\nwrote {target}")
    return target


# ---------------------------------------------------------------------------------- statistics


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1]) of a non-empty sequence."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min and max of a non-empty sequence."""
    return {
        "median": statistics.median(values),
        "q1": quantile(values, 0.25),
        "q3": quantile(values, 0.75),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def growth_exponent(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Slope of log(y) against log(x) between the first and last point (1: linear, < 1: better)."""
    if len(x) < 2 or y[0] <= 0 or y[-1] <= 0:
        return None
    return math.log(y[-1] / y[0]) / math.log(x[-1] / x[0])


# ------------------------------------------------------------------------------ time and memory


def maxrss_b() -> int:
    """This process's resident-set high-water mark in bytes (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


@dataclass
class Cost:
    """Wall seconds, process CPU seconds and (when traced) peak Python allocation of one step."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    py_peak_b: int | None = None
    rss_hwm_delta_b: int = 0
    rss_peak_delta_b: int | None = None


def rss_b() -> int:
    """This process's current resident set in bytes (/proc/self/statm; 0 where absent)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class RssPeak:
    """Samples the current RSS every ``every_s`` in a daemon thread; ``peak_b`` is the highest seen."""

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s = every_s
        self.peak_b = rss_b()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak_b = max(self.peak_b, rss_b())

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_b = max(self.peak_b, rss_b())


@contextlib.contextmanager
def measured(trace_memory: bool = False) -> Iterator[Cost]:
    """Measure the ``with`` body: wall and CPU time, RSS growth, and a tracemalloc peak if asked.

    ``py_peak_b`` is tracemalloc's peak of Python allocations above what was allocated at entry (it
    misses native buffers such as Arrow's). ``rss_peak_delta_b`` is the highest RSS seen (sampled every
    5 ms) minus the RSS at entry: it includes native memory but can miss spikes shorter than 5 ms.
    ``rss_hwm_delta_b`` is how much the process's RSS high-water mark (ru_maxrss) rose (0 when the body
    stayed below an earlier peak).
    """
    cost = Cost()
    hwm0, rss0 = maxrss_b(), rss_b()
    if trace_memory:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with RssPeak() as peak:
            yield cost
    finally:
        cost.wall_s = time.perf_counter() - t0
        cost.cpu_s = time.process_time() - c0
        if trace_memory:
            cost.py_peak_b = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
        cost.rss_hwm_delta_b = maxrss_b() - hwm0
        cost.rss_peak_delta_b = max(0, peak.peak_b - rss0) if rss0 else None


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -------------------------------------------------------------------------------------- tables


def mib(n: float | None) -> str:
    """Bytes as MiB with one decimal ("-" for None)."""
    return "-" if n is None else f"{n / 2**20:.1f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: columns left-aligned, widths fitted to the longest cell."""
    cells = [[str(h) for h in headers], *[["-" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def show(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print a titled table and return its text."""
    text = f"{title}\n{table(headers, rows)}"
    print(f"\n{text}")
    return text
