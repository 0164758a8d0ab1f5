#!/usr/bin/env bash
# Issue 9 on one GPU: the batch-size sweep of the ~1.1B model (examples/sweep_tinyllama_batch.yaml), its
# comparison table and figure, and track() around a block of matmuls.
#   scripts/gpu-sweep.sh OUT_DIR
set -uo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 MLFLOW_TRACKING_URI="sqlite:///$out/mlflow.db"
start=$SECONDS
python3 -m llem_mlflow sweep examples/sweep_tinyllama_batch.yaml --output-dir "$out/results" > "$out/sweep.log" 2>&1
echo "sweep wall s: $((SECONDS - start))" | tee -a "$out/sweep.log"
parent=$(grep -E "^mlflow parent" "$out/sweep.log" | grep -oE "[0-9a-f]{32}" | tail -1)
python3 -m llem_mlflow compare --parent "$parent" --csv "$out/compare.csv" --figure "$out/compare.png" > "$out/compare.log" 2>&1
python3 - "$out" <<'PY' > "$out/track.log" 2>&1
import sys, time, torch, mlflow, llem_mlflow
x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
with mlflow.start_run(run_name="track-demo") as run, llem_mlflow.run.track("matmuls") as t:
    t0 = time.time()
    while time.time() - t0 < 2.0:
        y = x @ x
print("tracked", t.duration_s, t.energy_j, t.avg_power_w)
print({k: v for k, v in mlflow.get_run(run.info.run_id).data.metrics.items() if not k.endswith("_w") or "avg" in k})
PY
