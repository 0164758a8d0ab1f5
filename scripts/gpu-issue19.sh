#!/usr/bin/env bash
# One GPU call after the restructure (issue 18) and the first issue 19 pieces:
#   suite:   the GPU suite on the restructured code (pytest -m gpu, with the plausibility checks);
#   decode:  eager vs our graph-captured decode loop (compile: graph) vs static+compile, batch 1;
#   sampler: no sampler vs polling vs NVML's sample buffer on a launch-bound decode (ABBA pairs).
#   scripts/gpu-issue19.sh OUT_DIR   (PARTS="suite decode sampler" by default)
set -uo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py=python3
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > "$out/gpu.txt" 2>&1
parts=${PARTS:-suite decode sampler}
has() { [[ " $parts " == *" $1 "* ]]; }
if has suite; then
  LLEM_GPU_RESULTS="$out/suite" timeout 170 $py -m pytest tests/integration -m gpu -v -rs -p no:cacheprovider \
    > "$out/pytest-gpu.log" 2>&1
  echo "pytest -m gpu rc=$?" | tee -a "$out/rcs.txt"
fi
if has decode; then
  timeout 100 $py benchmarks/backend_efficiency.py --out "$out/backend_efficiency.json" \
    --models gpt2,TinyLlama/TinyLlama-1.1B-Chat-v1.0 --batches 1 --modes eager,graph,static+compile \
    --new-tokens 128 --calls 3 --warmup 2 > "$out/backend_efficiency.log" 2>&1
  echo "backend_efficiency rc=$?" | tee -a "$out/rcs.txt"
fi
if has sampler; then
  timeout 90 $py benchmarks/sampler_overhead.py --gpu --workloads decode --batches 1 --pairs 20 --max-pairs 300 \
    --budget-s 70 --run-s 0.5 --out "$out/sampler_overhead.json" > "$out/sampler_overhead.log" 2>&1
  echo "sampler_overhead rc=$?" | tee -a "$out/rcs.txt"
fi
cat "$out/rcs.txt"
