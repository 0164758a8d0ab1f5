"""Screenshots of a sweep in the MLflow UI: the runs table (parent with nested children), the compare view
of the children, and the parent's page (summary artifacts), in headless Chromium.

    python scripts/sweep_screenshots.py OUT_DIR [SWEEP.yaml]   # default: examples/sweep_batch_precision.yaml

Runs the sweep on this machine (CPU: about a minute) into a fresh sqlite store in a temporary folder,
starts `mlflow server` on 127.0.0.1 and saves sweep_runs.png, sweep_compare.png, sweep_parent.png into
OUT_DIR. Needs Debian's `chromium`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ui_screenshots import EXPERIMENT, _free_port, _serve, _shoot  # noqa: E402


def _get(base: str, path: str) -> dict:
    return json.load(urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}"))


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    sweep = Path(sys.argv[2] if len(sys.argv) > 2 else "examples/sweep_batch_precision.yaml").resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db, artifacts = work / "mlflow.db", work / "mlartifacts"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HOME": str(work), "HF_HUB_OFFLINE": "1"}
        subprocess.run(["llem-mlflow", "sweep", str(sweep), "--tracking-uri", f"sqlite:///{db}",
                        "--output-dir", str(work / "results")], env=env, cwd=work, check=True)  # fmt: skip
        port = _free_port()
        server = _serve(db, artifacts, port, env)
        try:
            base = f"http://127.0.0.1:{port}"
            exp_id = _get(base, f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]["experiment_id"]
            body = json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode()
            request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", body, {"Content-Type": "application/json"})
            runs = json.load(urllib.request.urlopen(request))["runs"]
            tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
            children = [r["info"]["run_id"] for r, t in zip(runs, tags) if "mlflow.parentRunId" in t]
            parent = next(r["info"]["run_id"] for r, t in zip(runs, tags) if "llem.sweep.id" in t and "mlflow.parentRunId" not in t)
            ml = "workflowType=machine_learning"
            _shoot(f"{base}/#/experiments/{exp_id}/runs?{ml}", out / "sweep_runs.png")
            q = urllib.parse.quote
            compare = f"{base}/#/compare-runs?runs={q(json.dumps(children))}&experiments={q(json.dumps([exp_id]))}&{ml}"
            _shoot(compare, out / "sweep_compare.png", "1600,1400")
            _shoot(f"{base}/#/experiments/{exp_id}/runs/{parent}/artifacts?{ml}", out / "sweep_parent.png", "1600,1100")
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {out}/sweep_runs.png, sweep_compare.png, sweep_parent.png")


if __name__ == "__main__":
    main()
