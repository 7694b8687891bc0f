#!/usr/bin/env bash
# make gpu-check: what only a GPU can show, in the issue's order, within about 8 minutes, each result
# written to reports/gpu_check/ as soon as it exists (a run cut short keeps what it finished).
#   1. pytest -m gpu: no host syncs in the sampling loops, the fp16 (grad scaler) and bf16 training paths,
#      an SD LoRA step at 512 px batch 2 under 24 GB, lite's training steps under 16 GB;
#   2. the fullsize tier on CUDA (full and lite, minimal work) on the stand-ins;
#   3. benchmark pieces at full size (docs/benchmarks.md): SD inference, DDPM sampling, both trainings.
# Usage: bash tools/gpu_check.sh [budget seconds, default 480]. Python: $PY or .venv/bin/python or python3.
set -uo pipefail
cd "$(dirname "$0")/.."
BUDGET=${1:-480}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${GPU_CHECK_OUT:-reports/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg INPAINT_FULLSIZE_DEVICE=cuda
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
step() {  # step NAME MAX_SECONDS COMMAND...: run with the smaller of its limit and the time left
  local name=$1 limit=$2; shift 2
  local t; t=$(left); [ "$t" -lt "$limit" ] && limit=$t
  if [ "$limit" -lt 20 ]; then echo "skipped: no time left" > "$OUT/$name.log"; echo "[gpu-check] $name: skipped (budget spent)"; return; fi
  echo "[gpu-check] $name (up to ${limit}s) ..."
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >> "$OUT/steps.jsonl"
  echo "[gpu-check] $name: rc=$rc ($(( $(date +%s) - t0 ))s), log $OUT/$name.log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import torch, diffusers, peft, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'transformers', transformers.__version__)"
  date -u +%FT%TZ; } > "$OUT/device.txt" 2>&1
# the stand-ins (6 GB) are written on this machine first; data/standins is reused when already there
step standins 150 "$PY" -m tests.fixtures.standins --out data/standins
step pytest_gpu 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" tests/test_gpu.py tests/test_fullsize.py
step fullsize_cuda 180 "$PY" -m pytest -q -m fullsize -p no:cacheprovider --durations=20 --junitxml="$OUT/fullsize_cuda.xml" tests/test_fullsize.py -k "not benchmark and not gpu"
for w in sd_infer ddpm_sample sd_lora_train ddpm_train; do
  step "bench_$w" 90 "$PY" -m helpers.tools.bench --preset full --only "$w" --variants "bf16,sdpa,preset,all" --no-sweep --out "$OUT/bench.json"
done
echo "[gpu-check] done in $(( $(date +%s) - START ))s: $OUT"
