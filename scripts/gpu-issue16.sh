#!/usr/bin/env bash
# Issue 16 on a GPU, in one call:
#   1. the GPU suite (pytest -m gpu) with its physical plausibility checks;
#   2. a default run (gpt2, batch 8, 1 cycle; --n 1024 so the window outlasts 3 s) interrupted with SIGINT 3 s
#      into its measured window: status interrupted, the completed batches' tokens, the run KILLED, exit 130;
#   3. steady_state vs total on one workload, alternating (T S T S), to price the in-window counter reads.
#   scripts/gpu-issue16.sh OUT_DIR
set -uo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export MLFLOW_TRACKING_URI="sqlite:///$out/mlflow.db"
py=python3
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > "$out/gpu.txt" 2>&1

parts=${PARTS:-suite sigint steady}  # PARTS="sigint steady" runs a subset
has() { [[ " $parts " == *" $1 "* ]]; }
if has suite; then
LLEM_GPU_RESULTS="$out/suite" $py -m pytest tests/integration -m gpu -v -rs -p no:cacheprovider \
  > "$out/pytest-gpu.log" 2>&1
echo "pytest -m gpu rc=$?" | tee -a "$out/rcs.txt"
fi
if has sigint; then

$py -m llem_mlflow run --model gpt2 --weights random --n 1024 --output-dir "$out/sigint" \
  > "$out/sigint.log" 2>&1 &
pid=$!
for _ in $(seq 1 900); do grep -q "measuring" "$out/sigint.log" 2>/dev/null && break; sleep 0.1; done
sleep 3
kill -INT "$pid"
wait "$pid"
echo "sigint rc=$?" | tee -a "$out/rcs.txt"
fi
if has steady; then

common=(--model gpt2 --weights random --n 128 --batch-size 8 --max-output-tokens 64 --cycles 3
  --output-dir "$out/steady" --no-mlflow)
for m in total steady_state total steady_state; do
  $py -m llem_mlflow run "${common[@]}" --measurement-methodology "$m" > "$out/steady-$m.log" 2>&1
  echo "$m rc=$?" | tee -a "$out/rcs.txt"
done
fi

$py - "$out" <<'PY' > "$out/summary.txt" 2>&1
import json, pathlib, sys
from mlflow import MlflowClient
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("sigint/*/result.json")):
    r = json.loads(f.read_text())
    print("sigint:", r["status"], "output_tokens", r["output_tokens"], "window_s", r["total_inference_time_sec"],
          "gross_j", r["energy"]["gross_j"] if r["energy"] else None,
          "records", [(c.get("output_tokens"), c.get("duration_s"), c.get("gross_j"), c.get("partial"))
                      for c in r["cycles"]["records"]])
    print("sigint warnings:", [w for w in r["warnings"] if "nterrupt" in w])
c = MlflowClient()
for e in c.search_experiments():
    for run in c.search_runs([e.experiment_id]):
        print("run:", e.name, run.info.run_name, run.info.status)
for f in sorted(out.glob("steady/*/result.json"), key=lambda p: json.loads(p.read_text())["start_time"]):
    r = json.loads(f.read_text())
    cyc = r["cycles"]
    print(r["measurement_methodology"], "tok/s", round(r["avg_tokens_per_second"], 1),
          "J/tok", r["avg_energy_per_token_j"], "window_s", [round(x["duration_s"], 3) for x in cyc["records"]],
          "steady", json.dumps({k: v for k, v in (r.get("steady_state") or {}).items() if "read" in k}))
PY
cat "$out/summary.txt" "$out/rcs.txt"
