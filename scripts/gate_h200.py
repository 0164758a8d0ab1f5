"""The regression gate (issue 21) on runs measured on a GPU, through the real CLI and the run's store.

    python3 scripts/gate_h200.py OUT_DIR          (MLFLOW_TRACKING_URI names the store)

Finds the runs `scripts/gpu-h200.sh` logged by run name, then asks `llem-mlflow compare --baseline ...
--fail-if-worse PCT` three questions and prints each exit code beside the one expected:
  same:   the second run of a configuration against the first (expect 0: not worse);
  worse:  batch 8 against batch 64 of the same model (expect 1: batch 8 costs more energy per token);
  method: a steady_state run against a total run (expect 3: different methodology, cannot compare).
The Markdown verdicts are appended to OUT_DIR/gate.md. A question whose runs are missing is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PCT = os.environ.get("GATE_PCT", "5")
QUESTIONS = (  # name, candidate run name, baseline run name, expected exit code
    ("same", "gate-b8-again", "gate-b8", 0),
    ("worse", "gate-b8", "gate-b64", 1),
    ("method", "gate-b8-steady", "gate-b8", 3),
)


def run_ids() -> dict[str, str]:
    """Run name -> id of the newest finished run of that name, in every experiment of the store."""
    from mlflow import MlflowClient

    client = MlflowClient()
    ids: dict[str, str] = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
            if run.info.status == "FINISHED" and run.info.run_name:
                ids[run.info.run_name] = run.info.run_id
    return ids


def main(out: Path) -> int:
    ids = run_ids()
    wrong = 0
    for name, candidate, baseline, expected in QUESTIONS:
        if candidate not in ids or baseline not in ids:
            print(f"{name}: skipped (runs {candidate!r} and {baseline!r} not both in the store)")
            continue
        cmd = [
            sys.executable,
            "-m",
            "llem_mlflow",
            "compare",
            ids[candidate],
            "--baseline",
            ids[baseline],
            "--fail-if-worse",
            PCT,
            "--markdown",
            str(out / "gate.md"),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        verdict = "as expected" if done.returncode == expected else "NOT AS EXPECTED"
        wrong += done.returncode != expected
        print(
            f"=== {name}: {candidate} vs baseline {baseline}: exit {done.returncode} (expected {expected}, "
            f"{verdict})\n{done.stdout.strip()}\n{done.stderr.strip()}"
        )
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
