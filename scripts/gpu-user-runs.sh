#!/usr/bin/env bash
# What a user sees on a GPU host, as the README says to run it; results kept in OUT_DIR.
#   scripts/gpu-user-runs.sh OUT_DIR
# 1. the default gpt2 workload of the H200 notes (64 prompts x 128 new tokens, batch 8, random weights),
#    timed end to end, logged to a local sqlite store (its folder is the committed replay fixture);
# 2. the same at batch 16, so the runs table has two rows to compare;
# 3. device/precision/weights auto vs the values they resolve to: the two must share one hash;
# 4. logging a folder twice leaves one run.
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1
store="sqlite:///$out/mlflow.db"
common=(--model gpt2 --weights random --n 64 --max-output-tokens 128 --output-dir "$out/results" --tracking-uri "$store")
/usr/bin/time -f "wall %e s" python3 -m llem_mlflow run "${common[@]}" --batch-size 8 2>&1 | tee "$out/run-bs8.log"
python3 -m llem_mlflow run "${common[@]}" --batch-size 16 2>&1 | tee "$out/run-bs16.log"
small=(--model gpt2 --n 8 --batch-size 8 --max-output-tokens 16 --baseline-s 0 --output-dir "$out/hash" --no-mlflow)
python3 -m llem_mlflow run "${small[@]}" --device auto --precision auto --weights random > "$out/hash-auto.log" 2>&1
python3 -m llem_mlflow run "${small[@]}" --device cuda --precision bf16 --weights random > "$out/hash-exact.log" 2>&1
python3 - "$out/hash" <<'PY'
import json, pathlib, sys
rs = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).glob("*/result.json"))]
print("hashes:", [(r["config"]["device"], r["config"]["precision"], r["measurement_config_hash"]) for r in rs])
assert len({r["measurement_config_hash"] for r in rs}) == 1, "auto and its resolution must share a hash"
PY
first=$(ls -d "$out"/results/*/ | head -1)
python3 -m llem_mlflow log "$first" --tracking-uri "$store"
python3 - "$store" <<'PY'
import sys
from mlflow import MlflowClient
c = MlflowClient(sys.argv[1]); e = c.get_experiment_by_name("llem-mlflow")
runs = c.search_runs([e.experiment_id])
print("runs:", [(r.info.run_name, r.info.status, r.data.metrics.get("energy/per_output_token_j")) for r in runs])
assert len(runs) == 2, "logging a folder twice must not add a run"
PY
