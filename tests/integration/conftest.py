"""GPU tests: skipped (with a reason) unless NVML sees an NVIDIA GPU and torch sees CUDA."""

from __future__ import annotations

import functools
import os

import pytest

# Read at import: the autouse fixture in tests/conftest.py points MLFLOW_TRACKING_URI at a temp sqlite store.
_CI_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI", "")


@functools.lru_cache(maxsize=1)
def _gpu_missing_reason() -> str | None:
    from llem_mlflow.backends.runtime import cuda_available
    from llem_mlflow.measure.device import try_open_session

    session, reason = try_open_session()
    if session is None:
        return f"no NVIDIA GPU: {reason}"
    with session:
        if not session.all_gpus():
            return "no NVIDIA GPU: NVML lists none"
    if not cuda_available():
        return "no NVIDIA GPU: torch sees no CUDA device"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    reason = _gpu_missing_reason()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def gpu_tracking_uri(request: pytest.FixtureRequest) -> str:
    """The tracking server GPU CI started (MLFLOW_TRACKING_URI=http...), else one started here."""
    if _CI_TRACKING_URI.startswith(("http://", "https://")):
        return _CI_TRACKING_URI
    server: str = request.getfixturevalue("mlflow_server")
    return server
