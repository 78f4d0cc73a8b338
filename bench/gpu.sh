#!/usr/bin/env bash
# One prepared device check (< 8 min on one GPU): layer benchmarks (fp32 and bf16 autocast, incl. the 224x224
# VGG16 fc6/fc7 table), the CUDA fast-path tests, and a small search with several trials per GPU
# (fractional gpus_per_trial), with GPU utilisation sampled by nvidia-smi in the background.
# Tables go to $OUT (default ./bench_out). `bash bench/gpu.sh --cpu-smoke`: the same steps, tiny, on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench_out}"
mkdir -p "$OUT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
SMOKE=0
[ "${1:-}" = "--cpu-smoke" ] && SMOKE=1
status=0
run() {  # run NAME CMD...: output to $OUT/NAME.txt, echo its target lines, remember a failure
  local name=$1; shift
  echo "== $name: $*" | tee "$OUT/$name.txt"
  local t0=$SECONDS
  timeout "${STEP_TIMEOUT:-240}" "$@" >>"$OUT/$name.txt" 2>&1
  local rc=$?
  echo "== $name rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
  grep '^target ' "$OUT/$name.txt" || true
  [ $rc -eq 0 ] || status=1
}
UTIL_PID=""
if [ $SMOKE -eq 0 ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
    > "$OUT/gpu_util.csv" 2>/dev/null &
  UTIL_PID=$!
fi
if [ $SMOKE -eq 1 ]; then
  run layers "$PY" -m bench.layers --device cpu --batch 2 --steps 3 --in-features 16 --hidden 8 --sih-in 32 --repeat 1
  run search "$PY" -m bench.search --skip-ray --clips 8 --epochs 1 --size 16 --frames 2
else
  run layers "$PY" -m bench.layers --device cuda --repeat 11
  run layers_bf16 "$PY" -m bench.layers --device cuda --bf16 --repeat 11 --no-vgg
  run cuda_tests "$PY" -m pytest -q tests/test_prernn_cuda.py
  run search "$PY" -m bench.search --gpus-per-trial 0.25 --trials 8 --clips 256 --epochs 3
fi
if [ -n "$UTIL_PID" ]; then
  kill "$UTIL_PID" 2>/dev/null
  wait "$UTIL_PID" 2>/dev/null
  "$PY" - "$OUT/gpu_util.csv" <<'PYEOF' | tee "$OUT/gpu_util.txt"
import sys
rows = [l.split(",") for l in open(sys.argv[1]) if l.count(",") >= 2]
u = [float(r[1]) for r in rows if r[1].strip().replace(".", "").isdigit()]
m = [float(r[2]) for r in rows if r[2].strip().replace(".", "").isdigit()]
if u:
    print(f"GPU utilisation over {len(u)} samples: mean {sum(u) / len(u):.0f}%, max {max(u):.0f}%; "
          f"memory used max {max(m):.0f} MiB")
PYEOF
fi
cat "$OUT"/*.txt | grep '^target ' > "$OUT/targets.txt" || true
echo "tables in $OUT; targets:"; cat "$OUT/targets.txt"
exit $status
