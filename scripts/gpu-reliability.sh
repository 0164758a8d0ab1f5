#!/usr/bin/env bash
# Issue 10 on a GPU: a normal run (energy after the NVML fault rules), Ctrl-C in cycle 2 of a real run
# (status interrupted, KILLED run, exit 130), SIGTERM in the same place, and the gpu-marked tests.
#   scripts/gpu-reliability.sh OUT_DIR
set -uo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 MLFLOW_TRACKING_URI="sqlite:///$out/mlflow.db"
common=(--model gpt2 --weights random --device cuda --batch-size 8 --max-output-tokens 64 --baseline-s 2)
python3 -m llem_mlflow run "${common[@]}" --n 256 --cycles 3 --output-dir "$out/normal" > "$out/normal.log" 2>&1
echo "normal rc=$?" | tee -a "$out/rcs.txt"

stop_in_cycle2() {  # stop_in_cycle2 NAME SIGNAL
  python3 -m llem_mlflow run "${common[@]}" --n 512 --cycles 3 --output-dir "$out/$1" > "$out/$1.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 600); do grep -q "cycle 2/3" "$out/$1.log" 2>/dev/null && break; sleep 0.2; done
  sleep 1
  kill "-$2" "$pid"
  wait "$pid"
  echo "$1 rc=$?" | tee -a "$out/rcs.txt"
}
stop_in_cycle2 sigint INT
stop_in_cycle2 sigterm TERM
python3 -m pytest -m gpu -q -p no:cacheprovider tests > "$out/pytest-gpu.log" 2>&1
echo "pytest -m gpu rc=$?" | tee -a "$out/rcs.txt"
python3 - "$out" <<'PY' > "$out/summary.txt" 2>&1
import json, sys, pathlib
from mlflow.tracking import MlflowClient
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("*/*/result.json")):
    r = json.loads(f.read_text())
    print(f.parent.parent.name, r["status"], "cycles", (r.get("cycles") or {}).get("n"), "J", r["total_energy_j"],
          "J/tok", r["avg_energy_per_token_j"], "tok/s", round(r["avg_tokens_per_second"], 1),
          "warnings", [w[:90] for w in r["warnings"] if "nterrupt" in w or "GPU" in w][:3])
c = MlflowClient()
for e in c.search_experiments():
    for run in c.search_runs([e.experiment_id]):
        print("run", run.info.run_name, run.info.status, run.data.tags.get("llem.status"),
              run.data.metrics.get("energy/per_output_token_j"))
PY
