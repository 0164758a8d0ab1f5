"""The environment snapshot: Python, host, packages, driver, GPUs, git commit.

The snapshot is taken outside the measured window and starts no subprocess (git state is read from
``.git`` files), so the experiment stays in one process. No environment variables are copied into it
(credentials in URIs are handled by ``llem_mlflow.secrets``).
"""

from __future__ import annotations

import dataclasses
import os
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from llem_mlflow.protocols import GpuInfo
from llem_mlflow.results.records import EnvironmentSnapshot, GpuSnapshot

PACKAGES = ("torch", "transformers", "mlflow", "pydantic", "pyarrow", "nvidia-ml-py", "llem-mlflow")


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions (None when a package is absent)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU model name from /proc/cpuinfo, else the machine type, else None (no subprocess)."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.machine() or None


def ram_total_b(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Total RAM in bytes from /proc/meminfo, else from ``os.sysconf``, else None."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _git_dir(cwd: Path) -> Path | None:
    for folder in (cwd, *cwd.parents):
        dot = folder / ".git"
        if dot.is_dir():
            return dot
        if dot.is_file() and dot.read_text().startswith("gitdir:"):  # worktree or submodule
            return (folder / dot.read_text().split(":", 1)[1].strip()).resolve()
    return None


def _resolve_ref(git_dir: Path, ref: str) -> str | None:
    common = git_dir
    if (git_dir / "commondir").is_file():
        common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
    for base in (git_dir, common):
        if (base / ref).is_file():
            return (base / ref).read_text().strip()
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            if line.endswith(f" {ref}"):
                return line.split(" ", 1)[0]
    return None


def git_state(cwd: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree at ``cwd``, read from ``.git`` without running git.

    No subprocess is started (the experiment stays in one process), so ``dirty`` is not determined
    and is always None. (None, None) when ``cwd`` is not inside a repository or HEAD has no commit.
    """
    try:
        git_dir = _git_dir((cwd or Path.cwd()).resolve())
        if git_dir is None:
            return None, None
        head = (git_dir / "HEAD").read_text().strip()
        commit = _resolve_ref(git_dir, head[5:].strip()) if head.startswith("ref:") else head
    except OSError:
        return None, None
    return (commit, None) if commit and len(commit) == 40 else (None, None)


def _platform() -> str:
    # Not platform.platform(): it reads uname().processor, which runs `uname -p` in a subprocess.
    u = os.uname()
    return f"{u.sysname}-{u.release}-{u.machine}"


def snapshot(
    gpus: Sequence[GpuInfo],
    driver_version: str | None,
    backend_versions: dict[str, str | None],
    cwd: Path | None = None,
) -> EnvironmentSnapshot:
    """Where the experiment runs; ``backend_versions`` (what the backend loaded) wins over metadata."""
    packages = package_versions()
    for name, version in backend_versions.items():
        if name != "cuda_runtime" and (version is not None or name not in packages):
            packages[name] = version
    commit, dirty = git_state(cwd)
    return EnvironmentSnapshot(
        python_version=platform.python_version(),
        platform=_platform(),
        cpu_model=cpu_model(),
        cpu_count=os.cpu_count(),
        ram_total_b=ram_total_b(),
        packages=packages,
        cuda_runtime=backend_versions.get("cuda_runtime"),
        driver_version=driver_version,
        gpus=[GpuSnapshot(**dataclasses.asdict(gpu)) for gpu in gpus],
        git_commit=commit,
        git_dirty=dirty,
    )
