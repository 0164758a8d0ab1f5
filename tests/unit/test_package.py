"""Package hygiene: a cheap import, and each vendor library imported by its one owner module (or package)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "llem_mlflow"
#: vendor library -> the module that owns it, or the package (a folder, ending in "/") whose modules do.
OWNERS = {
    "torch": "backends/",
    "transformers": "backends/",
    "accelerate": "backends/",
    "pynvml": "measure/device.py",
    "mlflow": "tracking/",
    "pyarrow": "results/files.py",
    "matplotlib": ("results/plots.py", "results/pareto_plot.py"),
}


def test_import_loads_no_vendor_library() -> None:
    code = (
        "import sys; from llem_mlflow import ExperimentConfig, ExperimentResult, run_experiment; "
        f"print(sorted(m for m in {sorted(OWNERS)!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _owns(owner: str | tuple[str, ...], module: str) -> bool:
    """An owner is one module, a folder (``x/``) or a tuple of modules."""
    if isinstance(owner, tuple):
        return module in owner
    return module.startswith(owner) if owner.endswith("/") else module == owner


def test_vendor_imports_live_in_their_owner_module() -> None:
    for path in PACKAGE.rglob("*.py"):
        module = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            )
            for name in names:
                top = name.split(".")[0]
                assert top not in OWNERS or _owns(OWNERS[top], module), f"{module} imports {name}"
