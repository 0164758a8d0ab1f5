"""Screenshots of server-scenario runs (`scenario: server`) in the MLflow UI, for the docs (headless).

    cd /work/main && .venv/bin/python scripts/server_ui_screenshots.py docs/screenshots

In a temporary folder it starts the test suite's stand-in OpenAI server (tests/openai_stub.py,
`OpenAIStub(shape="vllm", tokens_per_chunk=2, delay_s=0.005)`) in a thread of this process, then runs the
real CLI against it into a fresh sqlite store (energy is null on a CPU machine; everything else is measured):

    llem-mlflow run --scenario server --server-url URL --n 32 --concurrency C --max-output-tokens 16 \\
        --cycles 3 --experiment-name serving-demo --run-name stub-cC       # for C in 1, 4, 16
    llem-mlflow sweep sweep.yaml    # scenario: server, the same URL and sizes,
                                    # sweep: {concurrency: [1, 4, 16]}, experiment serving-demo-sweep

then starts `mlflow server` on 127.0.0.1 (a free port) and saves into OUT_DIR:

  server-run-runs.png       the serving-demo runs table, with the columns concurrency, latency/ttft_p50_s,
                            throughput/output_tokens_per_s and serving/error_rate added (Models hidden)
  server-run-overview.png   stub-c4's Overview: description, the metrics table scrolled to its end
                            (latency/e2e_*, serving/*, steady/*, cycles/*) and the llem.* tags (llem.scenario,
                            llem.engine, llem.load, ...)
  server-run-artifacts.png  stub-c4's Artifacts tab with requests.parquet selected
  server-run-sweep.png      the sweep's runs table, the parent expanded over its three child runs

The stub's listen backlog is raised from http.server's 5 to 128: with 5, at concurrency 16 the last requests
of each cycle started about 1 s late (seemingly the kernel's SYN retransmit) and a few were reset, so
concurrency 16 looked slower than 4.
Chromium (Debian's `chromium`) is driven over the DevTools protocol (scripts/cdp.py, helpers from
scripts/sweep_screenshots.py); every wait polls the page for what the screenshot must show. A PNG over
400 KB is scaled down with Pillow.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests"))
from cdp import Browser  # noqa: E402
from openai_stub import OpenAIStub  # noqa: E402
from sweep_screenshots import ML, RUN_NAME_CELL, _autosize, _get, _js, _open, _set_column  # noqa: E402
from ui_screenshots import _free_port, _serve  # noqa: E402

LLEM = str(Path(sys.executable).with_name("llem-mlflow"))
EXPERIMENT, SWEEP_EXPERIMENT = "serving-demo", "serving-demo-sweep"
CONCURRENCY = [1, 4, 16]
RUN = "stub-c4"  # the run whose own pages are shown
COLUMNS = [
    ("Parameters", "concurrency"),
    ("Metrics", "latency/ttft_p50_s"),
    ("Metrics", "throughput/output_tokens_per_s"),
    ("Metrics", "serving/error_rate"),
]
MAX_BYTES = 400_000
COMMON = ["--n", "32", "--max-output-tokens", "16", "--cycles", "3"]


@contextlib.contextmanager
def _stub() -> Iterator[str]:
    ThreadingHTTPServer.request_queue_size = 128  # see the module docstring
    with OpenAIStub(shape="vllm", tokens_per_chunk=2, delay_s=0.005) as stub:
        yield str(stub.url)


def _measure(url: str, work: Path, uri: str, env: dict[str, str]) -> None:
    """The three single runs and the sweep, with the real CLI."""
    where = ["--tracking-uri", uri, "--output-dir", str(work / "results")]
    for c in CONCURRENCY:
        subprocess.run([LLEM, "run", "--scenario", "server", "--server-url", url, *COMMON,
                        "--concurrency", str(c), "--experiment-name", EXPERIMENT, "--run-name", f"stub-c{c}",
                        *where], env=env, cwd=work, check=True)  # fmt: skip
    sweep = work / "sweep.yaml"
    sweep.write_text(
        f"scenario: server\nserver_url: {url}\nn: 32\nmax_output_tokens: 16\ncycles: 3\n"
        f"experiment_name: {SWEEP_EXPERIMENT}\nsweep:\n  concurrency: {CONCURRENCY}\n"
    )
    subprocess.run([LLEM, "sweep", str(sweep), *where], env=env, cwd=work, check=True)


def _runs(base: str, experiment: str) -> tuple[str, list[dict[str, Any]]]:
    exp_id = _get(base, f"experiments/get-by-name?experiment_name={experiment}")["experiment"][
        "experiment_id"
    ]
    body = json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode()
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/runs/search", body, {"Content-Type": "application/json"}
    )
    return exp_id, json.load(urllib.request.urlopen(request))["runs"]


def _escape(page: Browser) -> None:
    for type_ in ("keyDown", "keyUp"):
        page.send("Input.dispatchKeyEvent", type=type_, key="Escape", code="Escape", windowsVirtualKeyCode=27)


def _row(run_id: str) -> str:
    return f'.ag-row[row-id="{run_id}"]'


def _shoot_table(page: Browser, url: str, run_ids: list[str], png: Path, parent: str | None = None) -> None:
    """The runs table with COLUMNS added, Models hidden and Run Name widened; `parent` expanded if given."""
    rows = " && ".join(f"!!document.querySelector({_js(_row(r))})" for r in run_ids)
    top = " && ".join(f"!!document.querySelector({_js(_row(r))})" for r in ([parent] if parent else run_ids))
    _open(page, url, top, "the runs in the runs table")
    page.evaluate(
        "[...document.querySelectorAll('[data-testid=\"column-selection-dropdown\"]')]"
        ".find(b => b.textContent.trim() === 'Columns').click()"
    )
    page.wait_for("!!document.querySelector('input[placeholder=\"Search columns\"]')", "the Columns selector")
    _set_column(page, "Attributes", "Models", shown=False)  # always "-" for llem-mlflow runs
    for group, name in COLUMNS:
        _set_column(page, group, name)
    _escape(page)
    page.wait_for(
        "!document.querySelector('input[placeholder=\"Search columns\"]')", "the Columns selector to close"
    )
    if parent and not page.evaluate(rows):  # collapsed (MLflow's default): the button left of the run name
        page.evaluate(
            f"document.querySelector({_js(_row(parent) + ' ' + RUN_NAME_CELL + ' button')}).click()"
        )
    page.wait_for(rows, f"all {len(run_ids)} rows in the runs table")
    for group, name in COLUMNS:
        if group != "Parameters":
            _autosize(page, group, name)  # server runs' names (gpt2-vllm-c16) fit their column as it is
    page.evaluate("document.activeElement?.blur()")  # no focus ring, and no hover highlight:
    page.send("Input.dispatchMouseEvent", type="mouseMoved", x=page.width // 2, y=page.height - 20)
    page.settle(1.0)
    page.screenshot(png)


def _shoot_overview(page: Browser, url: str, png: Path) -> None:
    """The run's Overview, its metrics table scrolled to the end (the serving/ and steady/ metrics)."""
    cell = (
        "[...document.querySelectorAll('a, span')].find(e => e.children.length === 0"
        " && e.textContent.trim() === 'steady/output_tokens_per_s')"
    )
    ready = f"!!{cell} && document.body.innerText.includes('llem.scenario')"
    _open(page, url, ready, "the run's metrics table and tags")
    scroller = (
        f"(() => {{ let e = {cell}; while (e && !(getComputedStyle(e).overflowY === 'auto'"
        " && e.scrollHeight > e.clientHeight + 1)) e = e.parentElement; return e; })()"
    )
    page.evaluate(f"(() => {{ const s = {scroller}; s.scrollTop = s.scrollHeight; return true; }})()")
    page.wait_for(
        f"(() => {{ const s = {scroller}, r = {cell}.getBoundingClientRect(), b = s.getBoundingClientRect();"
        " return r.top >= b.top && r.bottom <= b.bottom; })()",
        "steady/output_tokens_per_s to be in view in the metrics table",
    )
    page.settle(1.0)
    page.screenshot(png)


def _shoot_artifacts(page: Browser, url: str, png: Path) -> None:
    nodes = "[...document.querySelectorAll('[data-testid=\"artifact-tree-node\"]')]"
    node = f"{nodes}.find(e => e.textContent.trim() === 'requests.parquet')"
    _open(page, url, f"!!{node}", "requests.parquet in the run's artifacts")
    page.evaluate(f"{node}.click()")
    page.wait_for("document.body.innerText.includes('Path: ')", "the details of requests.parquet")
    page.settle(1.0)
    page.screenshot(png)


def _shrink(png: Path) -> None:
    """Scale a PNG down (in steps of 85%) until it is under MAX_BYTES."""
    while png.stat().st_size > MAX_BYTES:
        with Image.open(png) as image:
            smaller = image.resize(
                (int(image.width * 0.85), int(image.height * 0.85)), Image.Resampling.LANCZOS
            )
        smaller.save(png, optimize=True)


def _shoot_all(base: str, out: Path) -> list[Path]:
    exp_id, runs = _runs(base, EXPERIMENT)
    run_id = next(r["info"]["run_id"] for r in runs if r["info"]["run_name"] == RUN)
    sweep_id, sweep_runs = _runs(base, SWEEP_EXPERIMENT)
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in sweep_runs]
    children = [
        r["info"]["run_id"] for r, t in zip(sweep_runs, tags, strict=True) if "mlflow.parentRunId" in t
    ]
    parent = next(r["info"]["run_id"] for r, t in zip(sweep_runs, tags, strict=True)
                  if "llem.sweep.id" in t and "mlflow.parentRunId" not in t)  # fmt: skip
    pngs = [out / f"server-run-{name}.png" for name in ("runs", "overview", "artifacts", "sweep")]
    with Browser(1800, 520) as page:
        _shoot_table(page, f"{base}/#/experiments/{exp_id}/runs?{ML}", [r["info"]["run_id"] for r in runs],
                     pngs[0])  # fmt: skip
        page.set_size(1600, 1000)
        _shoot_overview(page, f"{base}/#/experiments/{exp_id}/runs/{run_id}?{ML}", pngs[1])
        page.set_size(1400, 560)
        _shoot_artifacts(page, f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifacts?{ML}", pngs[2])
        page.set_size(1800, 560)
        _shoot_table(page, f"{base}/#/experiments/{sweep_id}/runs?{ML}", [parent, *children], pngs[3], parent)
    return pngs


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = work / "mlflow.db"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "HOME": str(work), "HF_HUB_OFFLINE": "1"}
        with _stub() as url:
            _measure(url, work, f"sqlite:///{db}", env)
        serve_and_shoot(db, work / "mlartifacts", env, lambda url: _shoot_all(url, out))


def serve_and_shoot(
    db: Path, artifacts: Path, env: dict[str, str], shoot: Callable[[str], list[Path]]
) -> None:
    """Serve ``db`` with ``mlflow server`` on a free port, take ``shoot(url)``'s screenshots, stop the
    server, shrink PNGs over the size limit and say what was written."""
    port = _free_port()
    server = _serve(db, artifacts, port, env)
    try:
        pngs = shoot(f"http://127.0.0.1:{port}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    for png in pngs:
        _shrink(png)
    print("wrote " + ", ".join(f"{p} ({p.stat().st_size // 1000} KB)" for p in pngs))


if __name__ == "__main__":
    main()
