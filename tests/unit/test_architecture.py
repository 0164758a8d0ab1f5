"""The house rules of docs/architecture.md: imports run one way between packages, no circles, small modules.

Every import counts, wherever it stands: at module level, inside a function (a lazy import), or under
``TYPE_CHECKING``. A module's package is the folder under ``llem_mlflow/`` it lives in; the top-level
modules ``config``, ``config_gpu``, ``config_rules``, ``config_server``, ``config_yaml``, ``errors``,
``secrets``, ``protocols``, ``served``, ``interrupts`` and ``_version`` are the base, which every package may
import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "llem_mlflow"
BASE = {
    "config",
    "config_gpu",
    "config_rules",
    "config_server",
    "config_yaml",
    "errors",
    "secrets",
    "protocols",
    "served",
    "interrupts",
    "_version",
}
#: The old import paths kept for users (each only re-exports a module of a package).
SHIMS = {"result"}
#: package -> the packages it may import (besides itself). Downward only: cli -> sweep -> run -> tracking
#: -> results -> figures -> measure -> base; backends and serving beside them (reached from run, sweep, cli;
#: backends drive serving's server process).
ALLOWED: dict[str, set[str]] = {
    "cli": {"sweep", "run", "tracking", "results", "figures", "measure", "backends", "serving", "base"},
    "sweep": {"run", "tracking", "results", "figures", "measure", "backends", "serving", "base"},
    "run": {"tracking", "results", "figures", "measure", "backends", "serving", "base"},
    "tracking": {"results", "figures", "measure", "base"},
    "results": {"figures", "measure", "base"},
    "figures": {"measure", "base"},
    "measure": {"base"},
    "backends": {"serving", "base"},
    "serving": {"base"},
    "base": set(),
}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """The llem_mlflow modules ``module`` imports (a package's name when a name is not a module of it)."""
    known = set(known)
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {
                a.name.removeprefix("llem_mlflow.") for a in node.names if a.name.startswith("llem_mlflow.")
            }
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, here)
            if base is None:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                found.add(sub if sub in known else base)
    found.discard("")
    return found


def _absolute(node: ast.ImportFrom, here: str) -> str | None:
    """``node``'s module relative to ``llem_mlflow`` ('' for the package itself); None: not ours."""
    if node.level:
        parts = here.split(".") if here else []
        parts = parts[: len(parts) - node.level + 1]
        return ".".join([*parts, *([node.module] if node.module else [])])
    if node.module == "llem_mlflow":
        return ""
    if node.module and node.module.startswith("llem_mlflow."):
        return node.module.removeprefix("llem_mlflow.")
    return None


def _package(module: str) -> str:
    top = module.split(".")[0]
    return "base" if top in BASE else top


def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) - {m} for m, p in mods.items()}


def upward_arrows(edges: Mapping[str, set[str]]) -> list[str]:
    """Each import from one package into another that ALLOWED does not list, as 'a -> b'."""
    wrong = []
    for src, targets in edges.items():
        if src in ("", "__main__") or src in SHIMS:
            continue  # the package's own lazy names and `python -m` may reach anything
        for dst in sorted(targets):
            a, b = _package(src), _package(dst)
            if a != b and dst not in ("", "__main__") and b not in ALLOWED.get(a, set()):
                wrong.append(f"{src} -> {dst}")
    return wrong


def circles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_package_is_one_the_rules_name() -> None:
    packages = {_package(m) for m in _modules() if m not in ("", "__main__") and m not in SHIMS}
    assert packages <= set(ALLOWED), f"add {sorted(packages - set(ALLOWED))} to ALLOWED and the docs"


def test_imports_between_packages_run_one_way() -> None:
    assert upward_arrows(graph()) == []


def test_no_module_imports_itself_back_in_a_circle() -> None:
    assert circles(graph()) == []


def test_the_rules_catch_an_upward_arrow_and_a_circle() -> None:
    edges = {
        "measure.trace": {"results.schema", "errors"},
        "results.schema": {"measure.trace"},
        "errors": set(),
    }
    assert upward_arrows(edges) == ["measure.trace -> results.schema"]
    assert circles(edges) == [["measure.trace", "results.schema"]]
    assert upward_arrows({"config": {"measure.trace"}}) == ["config -> measure.trace"]


def test_lazy_and_type_checking_imports_count(tmp_path: Path) -> None:
    code = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llem_mlflow.run import track\n"
    code += "def f():\n    from llem_mlflow.results.schema import ExperimentResult\n"
    (tmp_path / "m.py").write_text(code)
    assert _imports("tracking.m", tmp_path / "m.py", {"run.track", "results.schema"}) == {
        "run.track",
        "results.schema",
    }


@pytest.mark.parametrize("module", sorted(_modules()), ids=str)
def test_no_module_is_over_400_lines(module: str) -> None:
    lines = len(_modules()[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines"


def test_no_function_is_over_60_lines() -> None:
    long = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.end_lineno is None:
                continue
            if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long == []


def test_the_public_api_and_old_import_paths_still_work() -> None:
    import llem_mlflow
    from llem_mlflow.config import ExperimentConfig
    from llem_mlflow.result import ExperimentResult

    assert llem_mlflow.ExperimentResult is ExperimentResult
    assert llem_mlflow.ExperimentConfig is ExperimentConfig
    assert {"run_experiment", "run_sweep", "track"} <= set(dir(llem_mlflow))
    assert all(callable(getattr(llem_mlflow, name)) for name in ("run_experiment", "run_sweep", "track"))
    from importlib import metadata

    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts["llem-mlflow"] == "llem_mlflow.cli.app:main"
    providers = [ep.load() for ep in metadata.entry_points(group="mlflow.run_context_provider")]
    assert [p.__name__ for p in providers if p.__module__.startswith("llem_mlflow")] == ["GpuRunContext"]
