#!/usr/bin/env bash
# The tests that drive MLflow, on the lowest MLflow the pin in pyproject.toml admits (scripts/check.sh runs the
# whole suite on the newest pip resolves). Installs that version into the active environment and, unless
# KEEP_LOWEST=1, puts the one it found back afterwards.
#   bash scripts/check-mlflow-lowest.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
lowest=$(python - <<'PY'
import re
print(re.search(r'"mlflow>=([0-9.]+)', open("pyproject.toml").read()).group(1))
PY
)
now=$(python -c "import importlib.metadata as m; print(m.version('mlflow'))")
pkgs() { echo "mlflow==$1 mlflow-skinny==$1 mlflow-tracing==$1"; }
# shellcheck disable=SC2046
python -m pip install --quiet $(pkgs "$lowest")
restore() { [ "${KEEP_LOWEST:-0}" = 1 ] || python -m pip install --quiet $(pkgs "$now"); }
trap restore EXIT
python -c "import mlflow; print('mlflow', mlflow.__version__, '(lowest supported)')"
python -m pytest -q -p no:cacheprovider "$@" \
  tests/unit/test_tracking.py tests/unit/test_tracking_server.py tests/unit/test_tracking_race.py \
  tests/unit/test_recording.py tests/unit/test_spool.py tests/unit/test_nested_runs.py \
  tests/unit/test_mlflow_names.py tests/unit/test_context_provider.py tests/unit/test_track.py tests/unit/test_traces.py \
  tests/unit/test_one_experiment.py tests/unit/test_sweep.py tests/unit/test_sweep_honest.py \
  tests/unit/test_mlproject.py tests/unit/test_nvml_faults.py tests/unit/test_interrupt_partial.py \
  tests/unit/test_decisions.py
