#!/usr/bin/env bash
# Every benchmark in GPU mode, sized to finish in about 6 minutes on one H200.
#
# Usage: bash benchmarks/run_gpu.sh OUT_DIR
# Writes OUT_DIR/<benchmark>.json, OUT_DIR/<benchmark>.log and OUT_DIR/summary.txt (every table).
# A benchmark that fails or runs past its time limit is noted in summary.txt; the others still run.
# Python: $PYTHON, else .venv/bin/python when present, else python.
set -uo pipefail

OUT_DIR=${1:?usage: bash benchmarks/run_gpu.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT_DIR"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
export HF_HUB_OFFLINE=1 MLFLOW_DISABLE_TELEMETRY=true TOKENIZERS_PARALLELISM=false

STATUS=()

bench() {  # bench NAME LIMIT_S ARGS...: run one benchmark with a time limit, log its output
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name (limit ${limit} s) ==="
  timeout --kill-after=10 "$limit" "$PY" "benchmarks/$name.py" --out "$OUT_DIR/$name.json" "$@" \
    >"$OUT_DIR/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT_DIR/$name.log"
  STATUS+=("$name: rc=$rc, $((SECONDS - t0)) s")
}

{ nvidia-smi --query-gpu=name,driver_version,power.limit,persistence_mode --format=csv; } >"$OUT_DIR/gpu.txt" 2>&1

bench import_time 60
bench sampler_overhead 90 --gpu --pairs 12 --run-s 0.5
bench tool_overhead 100 --gpu --trials 3
bench logging_1h 60 --from-disk
bench scaling 60
bench backend_efficiency 170 --models gpt2,TinyLlama/TinyLlama-1.1B-Chat-v1.0 --batches 1,8,64 \
  --new-tokens 128 --calls 3 --warmup 2

"$PY" - "$OUT_DIR" "${STATUS[@]}" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
parts = [(out / "gpu.txt").read_text() if (out / "gpu.txt").exists() else ""]
parts.append("Status:\n" + "\n".join(f"  {s}" for s in sys.argv[2:]))
for name in ["import_time", "sampler_overhead", "tool_overhead", "logging_1h", "scaling", "backend_efficiency"]:
    path = out / f"{name}.json"
    if path.exists():
        data = json.loads(path.read_text())
        parts.append(f"##### {name}\n{data['environment']['command']}\n\n{data.get('table', '')}")
    else:
        log = out / f"{name}.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        parts.append(f"##### {name}: NO RESULT\n{tail}")
(out / "summary.txt").write_text("\n\n".join(parts) + "\n")
print(f"\nwrote {out / 'summary.txt'}")
EOF
printf '%s\n' "${STATUS[@]}"
