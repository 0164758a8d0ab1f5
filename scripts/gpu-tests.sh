#!/usr/bin/env bash
# The GPU suite, as a developer, the GPU machine and gpu-ci.yml run it:
# starts a local MLflow tracking server when none is given, runs pytest -m gpu, keeps the results.
#   scripts/gpu-tests.sh [OUT_DIR]        (MLFLOW_TRACKING_URI=http://... to use a running server)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
mkdir -p "$out"
export MLFLOW_DISABLE_TELEMETRY=true LLEM_GPU_RESULTS="$out"
python3 -m pytest tests/integration -m gpu -v -rs --junitxml "$out/junit.xml" 2>&1 | tee "$out/pytest.log"
