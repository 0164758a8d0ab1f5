#!/usr/bin/env bash
# Issue 7's acceptance runs on one GPU: gpt2 and a ~1.1B llama-shaped model (random weights), 5 cycles each,
# with the settle warm-up, idle settle and isolated prefill; then a steady-state run with >= 30 s windows.
#   scripts/gpu-methodology.sh OUT_DIR
# Writes OUT_DIR/results/*/result.json and OUT_DIR/summary.txt (scripts/summarize_results.py).
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1
common=(--weights random --output-dir "$out/results" --tracking-uri "sqlite:///$out/mlflow.db"
        --warmup-settle-cv-pct 2 --warmup-max-batches 12 --baseline-s 5 --idle-settle-max-s 30
        --max-input-tokens 128 --max-output-tokens 128 --batch-size 64)
python3 -m llem_mlflow run --model gpt2 --n 512 --cycles 5 --isolated-prefill true "${common[@]}" 2>&1 | tee "$out/gpt2.log"
python3 -m llem_mlflow run --model TinyLlama/TinyLlama-1.1B-Chat-v1.0 --n 256 --cycles 5 --isolated-prefill true \
  "${common[@]}" 2>&1 | tee "$out/tinyllama.log"
python3 -m llem_mlflow run --model TinyLlama/TinyLlama-1.1B-Chat-v1.0 --n "${STEADY_N:-1280}" --cycles 3 \
  --measurement-methodology steady_state "${common[@]}" 2>&1 | tee "$out/tinyllama-steady.log"
python3 scripts/summarize_results.py "$out/results" | tee "$out/summary.txt"
