"""Screenshots of a sweep in the MLflow UI: the runs table (parent expanded over its nested children), the
compare view of the children, and the parent's page (summary artifacts), in headless Chromium.

    python scripts/sweep_screenshots.py OUT_DIR [SWEEP.yaml]   # default: examples/sweep_batch_precision.yaml

Runs the sweep on this machine (CPU: about a minute) into a fresh sqlite store in a temporary folder,
starts `mlflow server` on 127.0.0.1 and saves into OUT_DIR:

  sweep_runs.png     the runs table with the parent run expanded (MLflow shows it collapsed), its child runs
                     beneath it, and the swept parameters and a few metrics (energy when measured, throughput,
                     latency) added as columns
  sweep_compare.png  MLflow's compare view of the child runs
  sweep_parent.png   the parent's artifacts, with sweep_summary.md open in the preview

Chromium (Debian's `chromium`) is driven over the DevTools protocol (scripts/cdp.py) because the runs table
needs clicks: the Columns selector and the parent's expand button (the button in the parent row's Run Name
cell, `.ag-row[row-id=PARENT] [col-id="attributes.`Run Name`"] button`). Every wait polls the page for what
the screenshot must show and fails with a message after a timeout. The MLflow Assistant side panel is closed.
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

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cdp import Browser  # noqa: E402
from ui_screenshots import EXPERIMENT, _free_port, _serve  # noqa: E402

ML = "workflowType=machine_learning"  # the "Model training" side of MLflow 3.17's nav
# metric columns for the runs table, in this order, the first MAX_METRICS that the child runs have
METRICS = [
    "energy/per_output_token_j",
    "energy/net_j",
    "throughput/output_tokens_per_s",
    "time/inference_s",
    "latency/ttft_p50_s",
]
MAX_METRICS = 4
RUN_NAME_CELL = '[col-id="attributes.`Run Name`"]'
TREE_NODES = (
    '[...document.querySelectorAll(\'[data-testid="column-selector-tree"] [class*="-tree-treenode"]\')]'
)
TITLE = '[class*="-tree-title"]'


def _get(base: str, path: str) -> dict:
    return json.load(urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}"))


def _js(value: object) -> str:
    return json.dumps(value)


def _swept_params(sweep: Path) -> list[str]:
    """The parameter names the sweep varies (`sweep:` as a grid of lists or as a list of variants)."""
    spec = yaml.safe_load(sweep.read_text()).get("sweep") or {}
    variants = spec if isinstance(spec, list) else [spec]
    return list(dict.fromkeys(key for variant in variants for key in variant))


def _open(page: Browser, url: str, ready: str, what: str) -> None:
    """Load `url` afresh, wait until `ready` is truthy, close the Assistant panel, let the page settle."""
    page.navigate("about:blank")
    page.navigate(url)
    page.wait_for(ready, what)
    close = "document.querySelector('button[data-component-id=\"mlflow.assistant.chat_panel.close\"]')"
    if page.evaluate(f"!!{close}"):
        page.evaluate(f"{close}.click()")
        page.wait_for(f"!{close}", "the MLflow Assistant panel to close")
    page.settle(1.0)


def _header(name: str, group: str) -> str:
    """JavaScript for the runs table's header cell of a column (null when the column is not shown)."""
    col = {"Attributes": "attributes", "Parameters": "params", "Metrics": "metrics"}[group] + f".`{name}`"
    return f"document.querySelector('.ag-header-cell[col-id=' + JSON.stringify({_js(col)}) + ']')"


def _set_column(page: Browser, group: str, name: str, shown: bool = True) -> None:
    """Tick (or untick) `name` under `group` (Attributes, Parameters, Metrics) in the Columns selector."""
    search = "document.querySelector('input[placeholder=\"Search columns\"]')"
    page.evaluate(f"{search}.focus(); {search}.select()")
    page.send("Input.insertText", text=name)  # typed, so that React sees it; replaces the selection
    node = (
        f"(() => {{ let inGroup = false; for (const n of {TREE_NODES}) {{"
        f" const t = n.querySelector('{TITLE}')?.textContent || '';"
        f" if (!n.querySelector('[class*=\"-tree-indent-unit\"]')) inGroup = t.startsWith({_js(group)});"
        f" else if (inGroup && t === {_js(name)}) return n; }} return null; }})()"
    )
    page.wait_for(f"!!{node}", f"{group} > {name} in the Columns selector")
    if ("-tree-treenode-checkbox-checked" in page.evaluate(f"{node}.className")) != shown:
        page.evaluate(f"{node}.querySelector('[class*=\"-tree-checkbox\"]').click()")
    page.wait_for(f"{'!!' if shown else '!'}{_header(name, group)}",
                  f"the column {name} to be {'shown' if shown else 'hidden'} in the runs table")  # fmt: skip


def _autosize(page: Browser, group: str, name: str) -> None:
    """Widen a column to its header and values: double-click its resize handle, as a user would."""
    header = _header(name, group)
    box = json.loads(
        page.evaluate(
            f"JSON.stringify({header}.querySelector('.ag-header-cell-resize').getBoundingClientRect())"
        )
    )
    width = page.evaluate(f"{header}.getBoundingClientRect().width")
    # the handle's left part: the next column's header covers the rest of it
    x, y = box["x"] + 2, box["y"] + box["height"] / 2
    page.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    for clicks in (1, 2):
        for type_ in ("mousePressed", "mouseReleased"):
            page.send("Input.dispatchMouseEvent", type=type_, x=x, y=y, button="left", clickCount=clicks)
    page.wait_for(f"{header}.getBoundingClientRect().width > {width}", f"the column {name} to widen")


def _shoot_runs(page: Browser, url: str, parent: str, children: list[str], columns: list[tuple[str, str]],
                png: Path) -> None:  # fmt: skip
    row = f'.ag-row[row-id="{parent}"]'
    _open(
        page,
        url,
        f"!!document.querySelector({_js(row + ' ' + RUN_NAME_CELL)})",
        "the parent run in the runs table",
    )
    if columns:
        page.evaluate(
            "[...document.querySelectorAll('[data-testid=\"column-selection-dropdown\"]')]"
            ".find(b => b.textContent.trim() === 'Columns').click()"
        )
        page.wait_for(
            "!!document.querySelector('input[placeholder=\"Search columns\"]')", "the Columns selector"
        )
        _set_column(page, "Attributes", "Models", shown=False)  # always "-" for llem-mlflow runs
        for group, name in columns:
            _set_column(page, group, name)
        for type_ in ("keyDown", "keyUp"):  # Escape closes the selector
            page.send(
                "Input.dispatchKeyEvent", type=type_, key="Escape", code="Escape", windowsVirtualKeyCode=27
            )
        page.wait_for(
            "!document.querySelector('input[placeholder=\"Search columns\"]')",
            "the Columns selector to close",
        )
        for group, name in columns:
            if group == "Metrics":
                _autosize(page, group, name)
    shown = " && ".join(f"!!document.querySelector('.ag-row[row-id=\"{c}\"]')" for c in children)
    if not page.evaluate(shown):  # collapsed (MLflow's default): click the expand button left of the run name
        page.evaluate(f"document.querySelector({_js(row + ' ' + RUN_NAME_CELL + ' button')}).click()")
    page.wait_for(shown, f"the {len(children)} child runs under the expanded parent")
    page.evaluate("document.activeElement?.blur()")  # no focus ring on the last button clicked
    # and no hover highlight: the mouse goes to the empty space under the table
    page.send("Input.dispatchMouseEvent", type="mouseMoved", x=page.width // 2, y=page.height - 20)
    page.settle(1.0)
    page.screenshot(png)


def _shoot_compare(page: Browser, url: str, child_names: list[str], png: Path) -> None:
    text = "document.body.innerText"
    ready = f"{text}.includes('Comparing {len(child_names)} Runs') && " + " && ".join(
        f"{text}.includes({_js(n)})" for n in child_names
    )
    _open(
        page, url, ready + " && !!document.querySelector('.js-plotly-plot')", "the compare view with its plot"
    )
    page.screenshot(png)


def _shoot_parent(page: Browser, url: str, children: list[str], png: Path) -> None:
    nodes = "[...document.querySelectorAll('[data-testid=\"artifact-tree-node\"]')]"
    md = f"{nodes}.find(e => e.textContent.trim() === 'sweep_summary.md')"
    _open(page, url, f"!!{md}", "sweep_summary.md in the parent's artifacts")
    page.evaluate(f"{md}.click()")
    page.wait_for(" && ".join(f"document.body.innerText.includes('{c}')" for c in children),
                  "the preview of sweep_summary.md (the child run ids)")  # fmt: skip
    page.settle(1.0)
    page.screenshot(png)


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
            exp_id = _get(base, f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"][
                "experiment_id"
            ]
            body = json.dumps({"experiment_ids": [exp_id], "max_results": 100}).encode()
            request = urllib.request.Request(
                f"{base}/api/2.0/mlflow/runs/search", body, {"Content-Type": "application/json"}
            )
            runs = json.load(urllib.request.urlopen(request))["runs"]
            tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
            child_runs = [r for r, t in zip(runs, tags, strict=True) if "mlflow.parentRunId" in t]
            children = [r["info"]["run_id"] for r in child_runs]
            child_names = [r["info"]["run_name"] for r in child_runs]
            parent = next(
                r["info"]["run_id"]
                for r, t in zip(runs, tags, strict=True)
                if "llem.sweep.id" in t and "mlflow.parentRunId" not in t
            )
            params = {p["key"] for r in child_runs for p in r["data"].get("params", [])}
            metrics = {m["key"] for r in child_runs for m in r["data"].get("metrics", [])}
            columns = [("Parameters", p) for p in _swept_params(sweep) if p in params]
            columns += [("Metrics", m) for m in METRICS if m in metrics][:MAX_METRICS]
            q = urllib.parse.quote
            compared = f"runs={q(json.dumps(children))}&experiments={q(json.dumps([exp_id]))}"
            compare = f"{base}/#/compare-runs?{compared}&{ML}"
            with Browser(2000, 560) as page:
                _shoot_runs(page, f"{base}/#/experiments/{exp_id}/runs?{ML}", parent, children, columns,
                            out / "sweep_runs.png")  # fmt: skip
                page.set_size(1600, 1400)
                _shoot_compare(page, compare, child_names, out / "sweep_compare.png")
                page.set_size(1600, 1100)
                _shoot_parent(page, f"{base}/#/experiments/{exp_id}/runs/{parent}/artifacts?{ML}", children,
                              out / "sweep_parent.png")  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"wrote {out}/sweep_runs.png, sweep_compare.png, sweep_parent.png")


if __name__ == "__main__":
    main()
