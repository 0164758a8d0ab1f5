"""GPU and driver tags on MLflow runs that llem-mlflow did not make (an ``mlflow.run_context_provider``).

Registered in ``pyproject.toml`` as an entry point of group ``mlflow.run_context_provider``: once the
package is installed, MLflow instantiates ``GpuRunContext`` and, whenever the fluent API starts a run
(``mlflow.start_run()``), adds its tags: ``llem.gpu.name``, ``llem.gpu.count``, ``llem.gpu.uuids``
and ``llem.env.driver`` - the names llem-mlflow's own runs carry, so every run can be filtered and
grouped by GPU in the MLflow UI. MLflow duck-types providers (``in_context()``, ``tags()``), so this
module does not import MLflow.

The GPUs are those the process can see: NVML's, narrowed by ``CUDA_VISIBLE_DEVICES`` when it is set
(indices or ``GPU-`` UUID prefixes; like CUDA, the list ends at the first entry that names no GPU).
They are read once per process; without NVML or GPUs the provider is not in context and adds nothing.
It never raises: a tag is not worth a failed ``start_run``.

Loading this module also keeps credentials off the terminal in processes llem-mlflow does not run:
``mlflow run``'s parent prints "View run at <URI>" with the URI as given, so when
``MLFLOW_TRACKING_URI`` holds credentials, MLflow's ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` is set
(unless the user set it): ``secrets.quiet_url_printing``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from llem_mlflow.measure.device import visible_nvml_gpus
from llem_mlflow.protocols import GpuInfo
from llem_mlflow.secrets import quiet_url_printing

quiet_url_printing()  # MLflow imports this module in every process that imports mlflow


def gpu_tags(gpus: Sequence[GpuInfo], driver: str | None) -> dict[str, str]:
    """The tags for ``gpus``: empty without GPUs."""
    if not gpus:
        return {}
    tags = {
        "llem.gpu.name": gpus[0].name,
        "llem.gpu.count": str(len(gpus)),
        "llem.gpu.uuids": ",".join(g.uuid for g in gpus),
    }
    if driver:
        tags["llem.env.driver"] = driver
    return tags


def read_tags(nvml: Any = None) -> dict[str, str]:
    """The tags of the GPUs this process can see, read through NVML now; {} when NVML cannot tell."""
    from llem_mlflow.errors import DeviceError
    from llem_mlflow.measure.device import try_open_session

    session, _ = try_open_session(nvml)
    if session is None:
        return {}
    try:
        gpus = visible_nvml_gpus(session.all_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        return gpu_tags(gpus, session.driver_version())
    except DeviceError:
        return {}
    finally:
        session.close()


class GpuRunContext:
    """MLflow's run-context-provider interface: tags read once, on first use."""

    #: None: not read yet. Tests set ``nvml`` to a fake module before the first read.
    nvml: Any = None

    def __init__(self) -> None:
        self._tags: dict[str, str] | None = None

    def _read(self) -> dict[str, str]:
        if self._tags is None:
            try:
                self._tags = read_tags(self.nvml)
            except Exception:  # a provider must never break start_run
                self._tags = {}
        return self._tags

    def in_context(self) -> bool:
        """Whether this process sees an NVIDIA GPU through NVML."""
        return bool(self._read())

    def tags(self) -> dict[str, str]:
        """GPU name, count, UUIDs and the driver version."""
        return dict(self._read())
