"""Per cycle of a result folder: duration, gross and net power, and the trace's mean temperature and SM clock.

    python3 scripts/cycle_drift.py RESULT_DIR [RESULT_DIR ...]

A drift that repeats (power climbing with temperature while the board warms, at a steady clock) shows why
net J/token, a smaller number than gross with the same absolute drift, varies more from cycle to cycle. The
idle baseline's temperature is printed beside, from the trace rows of its phase. Needs pyarrow.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.mean(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def drift_rows(folder: Path) -> list[str]:
    """One line per cycle, then the baseline's line."""
    result = json.loads((folder / "result.json").read_text())
    trace = pq.read_table(folder / "timeseries.parquet").to_pylist()
    lines = [f"{folder.name}: cycle  duration_s  gross_w  net_w  temperature_c  sm_clock_mhz"]
    for c in result["cycles"]["records"]:
        rows = [r for r in trace if c["start_s"] <= r["timestamp_s"] <= c["end_s"]]
        gross_w, net_w = c["gross_j"] / c["duration_s"], c["net_j"] / c["duration_s"]
        lines.append(
            f"  {c['index']}  {c['duration_s']:.2f}  {gross_w:.2f}  {net_w:.2f}  "
            f"{_fmt(_mean(rows, 'temperature_c'))}  {_fmt(_mean(rows, 'sm_clock_mhz'), 0)}"
        )
    idle = [r for r in trace if r.get("phase") in ("idle", "baseline")]
    energy = result.get("energy") or {}
    idle_w, idle_s = energy.get("idle_power_w"), energy.get("idle_duration_s")
    idle_c = _fmt(_mean(idle, "temperature_c"))
    lines.append(f"  baseline  {_fmt(idle_s, 2)}  idle {_fmt(idle_w, 2)} W  {idle_c} C")
    return lines


def main() -> None:
    """Print the drift of every result folder named (or found one level below a named folder)."""
    for arg in sys.argv[1:]:
        root = Path(arg)
        for folder in [root] if (root / "result.json").exists() else sorted(root.glob("*/")):
            if (folder / "result.json").exists() and (folder / "timeseries.parquet").exists():
                print("\n".join(drift_rows(folder)))


if __name__ == "__main__":
    main()
