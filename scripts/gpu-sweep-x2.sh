#!/usr/bin/env bash
# Issue 9 on a 2-GPU machine: the batch-size sweep of the ~1.1B model (examples/sweep_tinyllama_batch.yaml)
# on one GPU, then the same sweep with --gpus 0,1 (one worker process per GPU); wall time of each, the
# comparison tables, which GPU measured which point, and the run-context-provider tags of a plain run.
#   scripts/gpu-sweep-x2.sh OUT_DIR
set -uo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 MLFLOW_TRACKING_URI="sqlite:///$out/mlflow.db"
nvidia-smi -L > "$out/gpus.txt"
sweep=examples/sweep_tinyllama_batch.yaml

run() {  # run NAME [flags...]: one sweep into its own experiment, wall time and comparison
  local name=$1 start=$SECONDS
  shift
  python3 -m llem_mlflow sweep "$sweep" --experiment-name "sweep-$name" --output-dir "$out/results-$name" "$@" \
    > "$out/sweep-$name.log" 2>&1
  echo "sweep $name rc=$? wall s: $((SECONDS - start))" | tee -a "$out/walls.txt"
  local parent
  parent=$(grep -E "^mlflow parent" "$out/sweep-$name.log" | grep -oE "[0-9a-f]{32}" | tail -1)
  python3 -m llem_mlflow compare --parent "$parent" --csv "$out/compare-$name.csv" --figure "$out/compare-$name.png" \
    > "$out/compare-$name.log" 2>&1
}

CUDA_VISIBLE_DEVICES=0 run 1gpu
run 2gpu --gpus 0,1

python3 - "$out" <<'PY' > "$out/store.log" 2>&1
import sys, mlflow
from mlflow.tracking import MlflowClient
c = MlflowClient()
for name in ("sweep-1gpu", "sweep-2gpu"):
    exp = c.get_experiment_by_name(name)
    for r in c.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        t, m = r.data.tags, r.data.metrics
        print(name, r.info.run_name, r.info.status, "gpu", t.get("llem.sweep.gpu"), t.get("llem.gpu.uuids"),
              "J/tok", m.get("energy/per_output_token_j"), "tok/s", m.get("throughput/output_tokens_per_s"),
              "start", r.info.start_time, "end", r.info.end_time)
mlflow.set_experiment("plain-runs")
with mlflow.start_run(run_name="plain") as run:
    pass
print("plain run tags:", {k: v for k, v in c.get_run(run.info.run_id).data.tags.items() if k.startswith("llem.")})
PY
