#!/usr/bin/env bash
# The checks a developer, .ci/run and the GitHub workflow all run: lint, format, types, tests (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check llem_mlflow tests examples
ruff format --check llem_mlflow tests examples
mypy llem_mlflow
python -m pytest "$@"  # gpu tests are collected and skipped (with the reason) where no GPU is seen
