"""Screenshots of GPU results already in an MLflow sqlite store, in the MLflow UI, for the docs (headless).

    .venv/bin/python scripts/gpu_ui_screenshots.py .gpu/results/a/r/mlflow.db docs/screenshots

Nothing is measured here: the store comes from a GPU machine (scripts/gpu-h200.sh's gate, eval and server
parts). It is copied into a temporary folder (the original is only read) and, in the copy, every
experiment's artifact location, its runs' artifact URIs and its traces' `mlflow.artifactLocation` tags are
pointed into that folder, so that nothing the server does reaches the GPU machine's paths. The artifacts
themselves were not kept; params, metrics, tags, traces (spans in the store) and assessments are in the
store. Then `mlflow server` serves the copy on 127.0.0.1 (a free port) and these are saved into OUT_DIR:

  genai_energy_eval_gpu.png  experiment `llem-mlflow-genai-energy`, run 'genai-energy-eval': its evaluation
                             (the run's Traces tab, as docs/screenshots/genai_energy_eval.png on a CPU),
                             one row per question with the `energy` scorer's joules beside `exact_match`,
                             the pointer on the most expensive row's energy so its rationale shows
                             ("... J measured by NVML over ... s")
  server-run-gpu-runs.png    experiment `server`'s runs table with the columns concurrency,
                             energy/per_output_token_j, latency/ttft_p50_s, throughput/output_tokens_per_s
(both tables: Dataset, Source and Models hidden, as the CPU screenshots hide Models)
  gate-runs-gpu.png          experiment `llem-mlflow`'s runs table (the gate runs) with the columns
                             batch_size, energy/per_output_token_j and its ci95 low and high

Chromium (Debian's `chromium`) is driven over the DevTools protocol (scripts/cdp.py, helpers from
scripts/sweep_screenshots.py and scripts/server_ui_screenshots.py); every wait polls the page for what the
screenshot must show. A PNG over 400 KB is scaled down with Pillow.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import tempfile
import urllib.error
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdp import Browser  # noqa: E402
from server_ui_screenshots import _escape, _row, _runs, serve_and_shoot  # noqa: E402
from sweep_screenshots import ML, _autosize, _js, _open, _set_column  # noqa: E402

EVAL_EXPERIMENT, EVAL_RUN = "llem-mlflow-genai-energy", "genai-energy-eval"
SERVER_EXPERIMENT, GATE_EXPERIMENT = "server", "llem-mlflow"
PER_TOKEN = "energy/per_output_token_j"
SERVER_COLUMNS = [
    ("Parameters", "concurrency"),
    ("Metrics", PER_TOKEN),
    ("Metrics", "latency/ttft_p50_s"),
    ("Metrics", "throughput/output_tokens_per_s"),
]
# Models is always "-" for llem-mlflow runs; Dataset ("synthetic (hash)") and Source ("__main__") would push
# the added columns out of the picture
HIDDEN = ["Models", "Dataset", "Source"]
GATE_COLUMNS = [
    ("Parameters", "batch_size"),
    ("Metrics", PER_TOKEN),
    ("Metrics", f"{PER_TOKEN}_ci95_low"),
    ("Metrics", f"{PER_TOKEN}_ci95_high"),
]


def _copy_store(source: Path, work: Path) -> Path:
    """Copy the store into `work` and point its artifact locations into `work/mlruns` (the copy only)."""
    db = Path(shutil.copy(source, work / "mlflow.db"))
    with sqlite3.connect(db) as con:
        experiments = con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        for exp_id, old in experiments:
            new = str(work / "mlruns" / str(exp_id))
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, exp_id))
            con.execute(
                "UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?) WHERE experiment_id = ?",
                (old, new, exp_id),
            )
            con.execute(
                "UPDATE trace_tags SET value = replace(value, ?, ?) WHERE key = 'mlflow.artifactLocation'"
                " AND request_id IN (SELECT request_id FROM trace_info WHERE experiment_id = ?)",
                (old, new, exp_id),
            )
    con.close()
    return db


def _shoot_eval(page: Browser, url: str, joules: list[float], png: Path) -> None:
    """The evaluation's rows (energy beside exact_match), the pointer on the largest energy cell."""
    shown = [f"{j:.3f}".rstrip("0").rstrip(".") for j in joules]  # as the UI writes them: 113.366
    text = "document.body.innerText"
    ready = " && ".join(f"{text}.includes({_js(s)})" for s in shown)
    _open(page, url, f"{ready} && {text}.includes('exact_match')", "the energy values in the evaluation rows")
    top = shown[joules.index(max(joules))]
    cell = (
        "[...document.querySelectorAll('span')]"
        f".find(e => e.children.length === 0 && e.textContent.trim() === {_js(top)})"
    )
    box = json.loads(page.evaluate(f"JSON.stringify({cell}.getBoundingClientRect())"))
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    page.wait_for(f"{text}.includes('measured by NVML')", "the energy rationale under the pointer")
    page.settle(1.0)
    page.screenshot(png)


def _shoot_table(
    page: Browser, url: str, run_ids: list[str], columns: list[tuple[str, str]], png: Path
) -> None:
    """The runs table with `columns` added (metrics widened to their values) and HIDDEN hidden."""
    rows = " && ".join(f"!!document.querySelector({_js(_row(r))})" for r in run_ids)
    _open(page, url, rows, f"the {len(run_ids)} runs in the runs table")
    page.evaluate(
        "[...document.querySelectorAll('[data-testid=\"column-selection-dropdown\"]')]"
        ".find(b => b.textContent.trim() === 'Columns').click()"
    )
    page.wait_for("!!document.querySelector('input[placeholder=\"Search columns\"]')", "the Columns selector")
    for name in HIDDEN:
        _set_column(page, "Attributes", name, shown=False)
    for group, name in columns:
        _set_column(page, group, name)
    _escape(page)
    page.wait_for(
        "!document.querySelector('input[placeholder=\"Search columns\"]')", "the Columns selector to close"
    )
    for group, name in columns:
        if group == "Metrics":
            _autosize(page, group, name)
    page.wait_for(rows, f"all {len(run_ids)} rows in the runs table")
    page.evaluate("document.activeElement?.blur()")  # no focus ring, and no hover highlight:
    page.send("Input.dispatchMouseEvent", type="mouseMoved", x=page.width // 2, y=page.height - 20)
    page.settle(1.0)
    page.screenshot(png)


def _eval_joules(db: Path, run_id: str) -> list[float]:
    """The `energy` scorer's value on each trace of the evaluation run; a null one stops the script."""
    with sqlite3.connect(db) as con:
        values = [v for (v,) in con.execute(
            "SELECT a.value FROM assessments a JOIN trace_request_metadata m ON m.request_id = a.trace_id"
            " WHERE a.name = 'energy' AND m.key = 'mlflow.sourceRun' AND m.value = ? ORDER BY a.trace_id",
            (run_id,),
        )]  # fmt: skip
    con.close()
    joules = [json.loads(v) for v in values]
    if not joules or not all(isinstance(j, int | float) for j in joules):
        raise SystemExit(f"run {run_id}: energy values {joules} (none, or some null): nothing to show")
    return [float(j) for j in joules]


def _maybe_runs(base: str, experiment: str) -> tuple[str, list[dict[str, Any]]] | None:
    """The experiment's id and runs; None (with a line saying so) when the store has no such experiment."""
    try:
        return _runs(base, experiment)
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
        print(f"no experiment {experiment!r} in this store: its screenshot is skipped")
        return None


def _shoot_all(base: str, db: Path, out: Path) -> list[Path]:
    """Each screenshot whose experiment the store has (a store from one part of gpu-h200.sh has one)."""
    evals, server, gate = (
        _maybe_runs(base, e) for e in (EVAL_EXPERIMENT, SERVER_EXPERIMENT, GATE_EXPERIMENT)
    )
    pngs: list[Path] = []
    with Browser(1500, 760) as page:
        if evals is not None:
            run_id = next(r["info"]["run_id"] for r in evals[1] if r["info"]["run_name"] == EVAL_RUN)
            pngs.append(out / "genai_energy_eval_gpu.png")
            _shoot_eval(
                page,
                f"{base}/#/experiments/{evals[0]}/runs/{run_id}/traces",
                _eval_joules(db, run_id),
                pngs[-1],
            )
        page.set_size(1600, 420)
        for found, columns, name in (
            (server, SERVER_COLUMNS, "server-run-gpu-runs.png"),
            (gate, GATE_COLUMNS, "gate-runs-gpu.png"),
        ):
            if found is not None:
                pngs.append(out / name)
                _shoot_table(page, f"{base}/#/experiments/{found[0]}/runs?{ML}",
                             [r["info"]["run_id"] for r in found[1]], columns, pngs[-1])  # fmt: skip
    return pngs


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    source, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = _copy_store(source, work)
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HOME": str(work)}
        serve_and_shoot(db, work / "mlruns", env, lambda url: _shoot_all(url, db, out))


if __name__ == "__main__":
    main()
