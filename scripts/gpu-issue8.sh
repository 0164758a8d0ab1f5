#!/usr/bin/env bash
# Issue 8's GPU figures in one go (about 8 minutes on one H200):
#   scripts/gpu-issue8.sh OUT_DIR
# 1. time to result of the README's default gpt2 run (the `stages` line); 2. the product's fast path against
# eager in the real runner (gpt2, batch 8, 3 cycles each); 3. decode speed per mode and batch
# (benchmarks/backend_efficiency.py); 4. sampler overhead (benchmarks/sampler_overhead.py --gpu).
set -uo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
store=(--output-dir "$out/results" --tracking-uri "sqlite:///$out/mlflow.db")
{ /usr/bin/time -v "$PY" -m llem_mlflow run --model gpt2 --weights random --n 64 --max-output-tokens 128 "${store[@]}"; } \
  > "$out/default-run.log" 2>&1
for mode in "--cache dynamic" "--cache static --compile reduce-overhead"; do
  timeout 150 "$PY" -m llem_mlflow run --model gpt2 --weights random --n 64 --batch-size 8 --max-output-tokens 128 \
    --cycles 3 --warmup-settle-cv-pct 3 $mode "${store[@]}" > "$out/fast-${mode// /_}.log" 2>&1
done
timeout 200 "$PY" benchmarks/backend_efficiency.py --out "$out/backend_efficiency.json" \
  --models gpt2,TinyLlama/TinyLlama-1.1B-Chat-v1.0 --batches 1,64 --new-tokens 128 --calls 3 --warmup 2 \
  > "$out/backend_efficiency.log" 2>&1
timeout 80 "$PY" benchmarks/sampler_overhead.py --gpu --pairs 10 --run-s 0.5 --out "$out/sampler_overhead.json" \
  > "$out/sampler_overhead.log" 2>&1
"$PY" scripts/summarize_results.py "$out/results" > "$out/summary.txt" 2>&1
