#!/usr/bin/env bash
# Issue 7's multi-GPU acceptance on a host with 2+ GPUs: models split over every GPU (device_map balanced),
# 3 cycles each; prints per-GPU energy against the total (scripts/summarize_results.py).
#   scripts/gpu-multi.sh OUT_DIR
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1
common=(--weights random --device cuda --device-map balanced --output-dir "$out/results"
        --tracking-uri "sqlite:///$out/mlflow.db" --warmup-settle-cv-pct 2 --warmup-max-batches 12
        --baseline-s 5 --cycles 3 --max-input-tokens 128 --max-output-tokens 128 --batch-size 64)
python3 -m llem_mlflow run --model gpt2 --n 256 "${common[@]}" 2>&1 | tee "$out/gpt2-split.log"
python3 -m llem_mlflow run --model TinyLlama/TinyLlama-1.1B-Chat-v1.0 --n 256 --isolated-prefill true "${common[@]}" \
  2>&1 | tee "$out/tinyllama-split.log"
python3 scripts/summarize_results.py "$out/results" | tee "$out/summary.txt"
