#!/usr/bin/env bash
# Repeatability on a GPU: the same configuration measured in 5 cycles in one process (model loaded once).
#   scripts/gpu-cycles.sh OUT_DIR
# Prints, per run, gross and net J/output token per cycle with their CV and 95% interval (result.json).
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1
common=(--weights random --cycles 5 --output-dir "$out/results" --tracking-uri "sqlite:///$out/mlflow.db")
python3 -m llem_mlflow run --model gpt2 --n 64 --batch-size 8 --max-output-tokens 128 "${common[@]}" 2>&1 | tee "$out/gpt2-bs8.log"
python3 -m llem_mlflow run --model gpt2 --n 512 --batch-size 64 --max-input-tokens 128 --max-output-tokens 128 \
  "${common[@]}" 2>&1 | tee "$out/gpt2-bs64.log"
python3 -m llem_mlflow run --model TinyLlama/TinyLlama-1.1B-Chat-v1.0 --n 256 --batch-size 64 --max-input-tokens 128 \
  --max-output-tokens 128 "${common[@]}" 2>&1 | tee "$out/tinyllama-bs64.log"
python3 - "$out/results" <<'PY' | tee "$out/summary.txt"
import json, pathlib, sys
for p in sorted(pathlib.Path(sys.argv[1]).glob("*/result.json")):
    r = json.loads(p.read_text()); c = r["cycles"]; u = r["uncertainty"] or {}
    def f(name):
        i = c[name]
        return f"mean {i['mean']:.5g} CV {i['cv_pct']:.2f}% ci95 [{i['ci95_low']:.5g}, {i['ci95_high']:.5g}]"
    print(r["model"], "batch", r["config"]["batch_size"], "cycles", c["n"], "window_s", [round(x["duration_s"], 2) for x in c["records"]])
    print("  gross J/token", f("energy_per_output_token_j_ci95"))
    print("  net J/token  ", f("net_energy_per_output_token_j_ci95"))
    print("  tok/s        ", f("output_tokens_per_s_ci95"))
    print("  idle before/after W", u.get("idle_before_w"), u.get("idle_after_w"), "net unc J", u.get("net_j"), "flags", list(r["quality_flags"]))
    print("  mfu", r["compute"]["mfu"], "J/TFLOP", r["compute"]["energy_per_tflop_j"], "cpu", r["cpu_energy"])
PY
