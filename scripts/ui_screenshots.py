"""Screenshots of what users see in the MLflow UI for logged result folders (headless Chromium).

    python scripts/ui_screenshots.py OUT_DIR RESULT_DIR [RESULT_DIR ...]

Copies each result folder to a temp dir, logs it with the real `llem-mlflow log` into a fresh sqlite
store, starts `mlflow server` on 127.0.0.1, and saves `runs.png` (the experiment's runs table) and
`power.png` (the power trace chart of all runs) and `run.png` (the first run's page) into OUT_DIR.
Needs Debian's `chromium`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "chromium"
EXPERIMENT = "llem-mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log(folders: list[Path], uri: str, env: dict[str, str]) -> list[str]:
    run_ids = []
    for folder in folders:
        out = subprocess.run(
            ["llem-mlflow", "log", str(folder), "--tracking-uri", uri],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        run_ids.append(
            out.split()[-1]
            if "mlflow run" in out
            else json.loads((folder / "mlflow_run.json").read_text())["run_id"]
        )
    return run_ids


def _serve(db: Path, artifacts: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--default-artifact-root",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit("mlflow server did not start")


def _shoot(url: str, png: Path, size: str = "1600,1000") -> None:
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={size}",
            "--virtual-time-budget=20000",
            f"--screenshot={png}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )


def _metric_url(base: str, exp_id: str, run_ids: list[str], key: str) -> str:
    """MLflow's metric page (the same query string its UI builds), x axis = step (ms from window start)."""
    q = urllib.parse.quote
    query = (
        f"runs={json.dumps(run_ids)}&metric={q(json.dumps(key))}&experiments={json.dumps([exp_id])}"
        f"&plot_metric_keys={q(json.dumps([key]))}&plot_layout={{}}&x_axis=step&y_axis_scale=linear"
        "&line_smoothness=1&show_point=false&deselected_curves=[]&last_linear_y_axis_range=[]"
    )
    return f"{base}/#/metric/{q(key, safe='')}?{query}"


def main() -> None:
    out, folders = Path(sys.argv[1]).resolve(), [Path(p).resolve() for p in sys.argv[2:]]
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        copies = [Path(shutil.copytree(f, work / f"r{i}")) for i, f in enumerate(folders)]
        db, artifacts = work / "mlflow.db", work / "artifacts"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HOME": str(work)}
        os.chdir(work)
        run_ids = _log(copies, f"sqlite:///{db}", env)
        port = _free_port()
        server = _serve(db, artifacts, port, env)
        try:
            base = f"http://127.0.0.1:{port}"
            exp = json.load(
                urllib.request.urlopen(
                    f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}"
                )
            )
            exp_id = exp["experiment"]["experiment_id"]
            ml = "workflowType=machine_learning"  # the "Model training" side of MLflow 3.17's nav
            _shoot(f"{base}/#/experiments/{exp_id}/runs?{ml}", out / "runs.png")
            _shoot(f"{base}/#/experiments/{exp_id}/runs/{run_ids[0]}?{ml}", out / "run.png", "1600,1400")
            _shoot(_metric_url(base, exp_id, run_ids, "power/gpu0_w") + f"&{ml}", out / "power.png")
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {out}/runs.png, power.png, run.png")


if __name__ == "__main__":
    main()
