#!/usr/bin/env bash
# Issues 19-21 on one GPU, in parts that fit one device call each (each part skips itself once BUDGET_S
# seconds of the call are spent, so a call ends inside its limit with what it measured):
#   efficiency: decode modes beside eager (backend_efficiency.py): gpt2 and the ~1.1B shape, b1/8/64,
#               eager and graph ("modes"); then b1 with the compiled modes ("compiled": the 4x and roofline
#               targets; EFF_MODES picks its modes), "tuned": b1 with max-autotune + coordinate descent (minutes
#               of compiling);
#               EFFICIENCY names which (default "modes compiled"); the roofline uses the card's HBM bandwidth;
#   profile:    the default gpt2 run under -X importtime (summed by scripts/startup_profile.py) and a sampling
#               profile of its main thread every 20 ms (scripts/sample_profile.py: wall time, low overhead),
#               PROFILE_ARGS added (e.g. "--min-window-s 5 --cycles 1": the seconds outside the window only);
#   sampler:    no sampler vs polling vs the driver's power sample buffer, launch-bound decode (ABBA), for
#               SAMPLER_BUDGET_S (default 55) s, SAMPLER_ARGS added (e.g. "--modes buffer --buffer-periods
#               1.0,0.1,0.04": the amplified estimate, see benchmarks/sampler_overhead.py);
#   default:    the default gpt2 run (time to result: the result's timings block);
#   repeat:     5-cycle runs, REPEAT="model:batch[:compile] ..." with about WINDOW_S s per cycle (n sized
#               from the efficiency part's ms/step when present);
#   server:     transformers serve --continuous-batching on a random-weights folder of SERVER_SHAPES: c=1 with
#               the server launched by the tool (SERVER_N1 requests), then SERVER_POINTS ("C" or "C:REQUESTS")
#               attached to one we start (SERVER_LAUNCH=0 skips the launched c=1), SERVER_ARGS added to each; in-process beside (INPROCESS_SHAPES), static
#               batches and batching: continuous;
#   gaterun:    gpt2 with the GPU defaults and GATE_WINDOW_S s windows: b8, b8 again, b64, b8 steady_state;
#   gate:       compare --fail-if-worse on those runs (same config, b8 vs b64, other methodology);
#   eval:       examples/genai_energy_eval.py with real energy;
#   paths:      gpt2 b8 with the GPU defaults, compile off (eager) vs reduce-overhead vs graph (the default),
#               PATHS_ARGS added (e.g. "--min-window-s 6");
#   table:      benchmarks/sweeps/gpu_defaults_table.yaml in one `llem-mlflow sweep` (imports paid once): gpt2 b64,
#               ~1.1B b64 and b1 with the GPU defaults, then the three paths on gpt2 b8 (the repeat and paths
#               parts' rows, ~480 s on an H100; TABLE_YAML names another file); its store is /tmp/gpu-table, so
#               cut by the budget, the part in the next call on the same warm machine measures only the rest;
#   examples:   examples/server-launch.yaml and examples/server-attach.yaml as they are, on a gpt2 folder.
# Everything logs to $OUT_DIR/mlflow.db; results under $OUT_DIR/<part>/.
#   scripts/gpu-h200.sh OUT_DIR        (PARTS="efficiency sampler default repeat" by default)
set -uo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_UPDATE_CHECK=1
export MLFLOW_TRACKING_URI="sqlite:///$out/mlflow.db"
py=python3
budget=${BUDGET_S:-540}
parts=${PARTS:-efficiency sampler default repeat}
has() { [[ " $parts " == *" $1 "* ]]; }
left() { [ "$SECONDS" -lt "$budget" ] || { echo "skip $1: ${SECONDS}s spent" | tee -a "$out/rcs.txt"; return 1; }; }
rc() { echo "$1 rc=$2 t=${SECONDS}s" | tee -a "$out/rcs.txt"; }
cap() { local c=$((budget + 50 - SECONDS)); [ "$c" -lt 30 ] && c=30; [ "$1" -lt "$c" ] && c=$1; echo "$c"; }  # a timeout inside the call
# A server left by an earlier call on the same warm machine (one cut by its time limit) would hold the GPU and
# the port: our attach points would talk to it and every run would carry other_processes. Stop any first.
pkill -f "transformers serve" 2>/dev/null && sleep 3
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  >> "$out/gpu.txt" 2>&1

default_run() {  # the default gpt2 run, as a user types it (time to result: the result's timings block)
  local s=$SECONDS
  timeout 200 $py -m llem_mlflow run --model gpt2 --weights random --output-dir "$out/default" \
    --run-name "default-gpt2-$1" > "$out/default-$1.log" 2>&1
  rc "default-$1 wall=$((SECONDS - s))s" $?
}
has default && left default && default_run first
hbm=4.8e12; grep -q H100 "$out/gpu.txt" && hbm=3.35e12  # the HBM roofline: H200 4.8 TB/s, H100 SXM 3.35
if has efficiency && left efficiency; then  # EFFICIENCY="modes compiled" (default both)
  if [[ " ${EFFICIENCY:-modes compiled} " == *" modes "* ]]; then
    timeout 150 $py benchmarks/backend_efficiency.py --out "$out/efficiency_modes.json" \
      --models gpt2,TinyLlama/TinyLlama-1.1B-Chat-v1.0 --batches 1,8,64 --modes eager,graph \
      --new-tokens 128 --calls 3 --warmup 2 --hbm-bytes-per-s $hbm > "$out/efficiency_modes.log" 2>&1
    rc efficiency_modes $?
  fi
  [[ " ${EFFICIENCY:-modes compiled} " == *" compiled "* ]] && left efficiency_compiled && timeout 170 \
    $py benchmarks/backend_efficiency.py --out "$out/efficiency_compiled.json" \
    --models gpt2,TinyLlama/TinyLlama-1.1B-Chat-v1.0 --batches 1 --modes "${EFF_MODES:-eager,graph,graph+compile,graph+compile-exact}" \
    --new-tokens 128 --calls 3 --warmup 2 --hbm-bytes-per-s $hbm > "$out/efficiency_compiled.log" 2>&1
  rc efficiency_compiled $?
  [[ " ${EFFICIENCY:-modes compiled} " == *" tuned "* ]] && left efficiency_tuned && timeout "$(cap 300)" \
    $py benchmarks/backend_efficiency.py --out "$out/efficiency_tuned.json" \
    --models TinyLlama/TinyLlama-1.1B-Chat-v1.0,gpt2 --batches 1 --modes eager,graph+compile-tuned \
    --new-tokens 128 --calls 3 --warmup 2 --hbm-bytes-per-s $hbm > "$out/efficiency_tuned.log" 2>&1
  rc efficiency_tuned $?
fi
if has profile && left profile; then  # where the default run's seconds outside the window go: imports, calls
  timeout 200 $py -X importtime scripts/sample_profile.py "$out/profile_samples.txt" -m llem_mlflow run \
    --model gpt2 --weights random --output-dir "$out/profile" --run-name default-gpt2-profiled ${PROFILE_ARGS:-} \
    > "$out/profile.log" 2> "$out/importtime.txt"
  rc profile $?
  $py scripts/startup_profile.py "$out/importtime.txt" > "$out/profile_summary.txt" 2>&1
fi
if has sampler && left sampler; then
  sb=${SAMPLER_BUDGET_S:-55}
  timeout $((sb + 25)) $py benchmarks/sampler_overhead.py --gpu --workloads decode --batches 1 --pairs 20 \
    --max-pairs 400 --budget-s "$sb" --run-s 0.5 ${SAMPLER_ARGS:-} --out "$out/sampler_overhead.json" > "$out/sampler_overhead.log" 2>&1
  rc sampler $?
fi
prompts_for() {  # prompts_for MODEL BATCH COMPILE: n for about WINDOW_S s per cycle
  $py - "$out" "$1" "$2" "$3" "${WINDOW_S:-10}" <<'PY'
import json, math, pathlib, sys
out, model, batch, compile_, window = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
mode = {"graph": "graph", "off": "eager", "reduce-overhead": "static+compile"}.get(compile_, "graph")
ms = None
for f in ("efficiency_modes.json", "efficiency_compiled.json"):
    p = pathlib.Path(out) / f
    if p.exists():
        for c in json.loads(p.read_text())["cells"]:
            short = "gpt2" if c["model"] == "gpt2" else c["model"]
            if short.split("/")[-1].lower().startswith(model.split("/")[-1].lower()[:8]) \
                    and c["batch"] == batch and c["mode"] == mode and c["ms_per_step"]:
                ms = c["ms_per_step"]
ms = ms or {"gpt2": 6.0}.get(model, 14.0)
batch_s = ms * 64 / 1000 * 1.15  # 64 new tokens, prefill and host gaps
print(min(8192, batch * max(2, math.ceil(window / batch_s))))
PY
}
if has repeat; then
  for spec in ${REPEAT:-gpt2:8 gpt2:64}; do
    left "repeat $spec" || break
    IFS=: read -r model batch compile tag <<< "$spec"  # tag: again, steady (steady_state), psettle
    compile=${compile:-graph}
    cache=static; [ "$compile" = off ] && cache=dynamic
    n=$(prompts_for "$model" "$batch" "$compile")
    name="rep-$(basename "$model")-b$batch-$compile${tag:+-$tag}"
    method=total; [ "$tag" = steady ] && method=steady_state
    extra=(); [ "$tag" = psettle ] && extra=(--warmup-power-settle-pct 1)  # the opt-in power-settle warm-up
    timeout 150 $py -m llem_mlflow run --model "$model" --weights random --batch-size "$batch" --n "$n" \
      --compile "$compile" --cache "$cache" --cycles 5 --warmup-settle-cv-pct 2 --measurement-methodology "$method" \
      --output-dir "$out/repeat" --run-name "$name" ${REPEAT_ARGS:-} "${extra[@]}" > "$out/$name.log" 2>&1
    rc "$name n=$n" $?
  done
fi
gate_run() {  # gate_run NAME ARGS...: a gpt2 run with the GPU defaults and a GATE_WINDOW_S window per cycle
  local name=$1
  shift
  left "$name" || return 1
  timeout 150 $py -m llem_mlflow run --model gpt2 --weights random --output-dir "$out/gate" --run-name "$name" \
    --min-window-s "${GATE_WINDOW_S:-8}" "$@" > "$out/$name.log" 2>&1
  rc "$name" $?
}
if has gaterun; then
  gate_run gate-b8 --batch-size 8
  gate_run gate-b8-again --batch-size 8
  gate_run gate-b64 --batch-size 64 --n 256
  gate_run gate-b8-steady --batch-size 8 --measurement-methodology steady_state
fi
if has gate && left gate; then
  $py scripts/gate_h200.py "$out" > "$out/gate.log" 2>&1
  rc gate $?
fi
if has eval && left eval; then
  timeout 120 $py examples/genai_energy_eval.py > "$out/eval.log" 2>&1
  rc eval $?
fi
srv() {  # srv NAME CONCURRENCY N ARGS...: one server-scenario run of $folder
  local name=$1 conc=$2 n=$3
  shift 3
  left "$name" || return 1
  timeout 200 $py -m llem_mlflow run --scenario server --model "$folder" --concurrency "$conc" --n "$n" \
    --cycles "${SERVER_CYCLES:-3}" --max-output-tokens 64 --output-dir "$out/server" --experiment-name server \
    --run-name "$name" "$@" ${SERVER_ARGS:-} > "$out/$name.log" 2>&1
  rc "$name" $?
}
wait_health() {  # wait_health URL: up to 180 s
  $py - "$1" <<'PY'
import sys, time, urllib.request
for _ in range(180):
    try:
        urllib.request.urlopen(sys.argv[1] + "/health", timeout=2)
        sys.exit(0)
    except Exception:
        time.sleep(1)
sys.exit(1)
PY
}
folder_of() {  # folder_of SHAPE: a random-weights servable folder of SHAPE (made once), in $folder
  b=$(basename "$1")
  folder=/tmp/models/$b
  [ -d "$folder" ] || $py scripts/served_model_folder.py "$1" "$folder" > "$out/folder-$b.log" 2>&1
}
serve_points() {  # serve_points SHAPE: c=1 launched by the tool, then SERVER_POINTS attached to one server
  folder_of "$1"
  [ "${SERVER_LAUNCH:-1}" = 1 ] && srv "$b-launch-c1" 1 "${SERVER_N1:-24}" --server-command "transformers serve {model} --host {host} --port {port} --continuous-batching"
  url=http://127.0.0.1:18123  # attach mode: one server of ours for the other points, measured on GPU 0
  setsid transformers serve "$folder" --host 127.0.0.1 --port 18123 --continuous-batching > "$out/serve-$b.log" 2>&1 &
  spid=$!
  wait_health "$url"
  rc "health $b" $?
  for point in ${SERVER_POINTS:-8 32 128}; do  # CONCURRENCY or CONCURRENCY:REQUESTS
    c=${point%%:*} n=${point#*:}
    [ "$n" = "$point" ] && n=$((c * 4 < 128 ? 128 : c * 4))
    srv "$b-attach-c$c" "$c" "$n" --server-url "$url" --server-gpus 0
  done
  kill -TERM -- -"$spid" 2>/dev/null; sleep 2; kill -KILL -- -"$spid" 2>/dev/null
}
if has server; then  # SERVER_SHAPES served; INPROCESS_SHAPES (default: the same) in-process when SERVER_INPROCESS=1
  for shape in ${SERVER_SHAPES:-gpt2}; do
    left "server $shape" && serve_points "$shape"
  done
  for shape in ${INPROCESS_SHAPES:-${SERVER_SHAPES:-gpt2}}; do
    [ "${SERVER_INPROCESS:-1}" = 1 ] && left "inprocess $shape" || break
    folder_of "$shape"
    timeout 150 $py -m llem_mlflow run --model "$folder" --weights pretrained --n 256 --batch-size 32 --cycles 3 \
      --min-window-s 8 --output-dir "$out/server-inprocess" --experiment-name server --run-name "inprocess-$b-b32" \
      > "$out/inprocess-$b.log" 2>&1
    rc "inprocess $b" $?
    left "inprocess continuous $b" || break  # the same, through transformers' generate_batch
    timeout 150 $py -m llem_mlflow run --model "$folder" --weights pretrained --n 256 --batch-size 32 --cycles 3 \
      --batching continuous --min-window-s 8 --output-dir "$out/server-inprocess" --experiment-name server \
      --run-name "inprocess-continuous-$b-b32" > "$out/inprocess-continuous-$b.log" 2>&1
    rc "inprocess continuous $b" $?
  done
  $py scripts/serving_table.py "$out/server" "$out/server-inprocess" > "$out/serving_table.md" 2>&1
fi
if has table && left table; then  # repeat's last three shapes and the three paths in one sweep process (issue 19)
  tdir=/tmp/gpu-table  # outside OUT_DIR: the same part in a later call on this warm machine resumes the sweep
  mkdir -p "$tdir"
  MLFLOW_TRACKING_URI="sqlite:///$tdir/mlflow.db" timeout "$(cap 500)" $py -m llem_mlflow sweep \
    "${TABLE_YAML:-benchmarks/sweeps/gpu_defaults_table.yaml}" --output-dir "$tdir/results" \
    --experiment-name gpu-defaults-table >> "$out/table.log" 2>&1
  rc table $?
  rm -rf "$out/table" && cp -r "$tdir/results" "$out/table" && cp "$tdir/mlflow.db" "$out/table-mlflow.db"
fi
if has paths; then  # eager vs generate()'s compiled path vs the default (graph), one workload (issue 19)
  for path in "off dynamic" "reduce-overhead static" "graph static"; do
    read -r compile cache <<< "$path"
    left "path $compile" || break
    s=$SECONDS
    timeout 200 $py -m llem_mlflow run --model gpt2 --weights random --compile "$compile" --cache "$cache" \
      --output-dir "$out/paths" --run-name "path-gpt2-b8-$compile" ${PATHS_ARGS:-} > "$out/path-$compile.log" 2>&1
    rc "path $compile wall=$((SECONDS - s))s" $?
  done
fi
if has examples; then  # the example YAMLs themselves (issue 20): launch, then attach to a server we start
  folder=/tmp/models/gpt2
  [ -d "$folder" ] || $py scripts/served_model_folder.py gpt2 "$folder" > "$out/folder-gpt2.log" 2>&1
  left "example launch" && timeout 200 $py -m llem_mlflow run examples/server-launch.yaml --model "$folder" \
    --output-dir "$out/examples" --experiment-name examples > "$out/example-launch.log" 2>&1
  rc "example launch" $?
  setsid transformers serve "$folder" --host 127.0.0.1 --port 8000 --continuous-batching > "$out/serve-8000.log" 2>&1 &
  spid=$!
  wait_health http://127.0.0.1:8000
  left "example attach" && timeout 200 $py -m llem_mlflow run examples/server-attach.yaml --model "$folder" \
    --server-gpus 0 --output-dir "$out/examples" --experiment-name examples > "$out/example-attach.log" 2>&1
  rc "example attach" $?
  kill -TERM -- -"$spid" 2>/dev/null; sleep 2; kill -KILL -- -"$spid" 2>/dev/null
fi
has default && left "default again" && default_run again
for d in default repeat table paths gate server server-inprocess examples; do
  [ -d "$out/$d" ] && { echo "=== $d"; $py scripts/summarize_results.py "$out/$d"; $py scripts/cycle_drift.py "$out/$d"; }
done > "$out/summary.txt" 2>&1
cat "$out/gpu.txt" "$out/rcs.txt"
tail -n 60 "$out/summary.txt"
