#!/usr/bin/env bash
# HOBBIT's GPU-tier benchmark, on a machine with an NVIDIA GPU (`make bench-gpu`), after
# scripts/test-cuda.sh has built $BUILD:
#   1. the widened benchmark model: the trained model of models/ with every expert's FFN width
#      zero-padded to 32768 (training/widen.py: same function, experts 128x the bytes),
#      converted to q8_0 + q4_k by `hobbit convert` (python -m convert);
#   2. hobbit-gpu bench (csrc/tools/hobbit-gpu.cpp): B-resident, B-cpu-moe, B-n-cpu-moe,
#      B-lru-gpu, HOBBIT-gpu without and with prefetch, at BUDGET (default 0.25) of the hi
#      expert bytes in VRAM; N_GEN tokens decoded, medians of RUNS runs; quality of each row
#      against B-resident (all hi, every expert in VRAM).
#
#   scripts/bench-gpu.sh      (env: BUILD, WORK, BUDGET, N_GEN, RUNS, THREADS, PYTHON)
#
# Needs python3 with torch and safetensors (widening) and the converter's packages (numpy,
# gguf, typer, rich); the stock rows load the mixed file without HOBBIT, which reads only its
# standard (q8_0) expert tensors, as a plain q8_0 file would.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build-cuda}
work=${WORK:-out/bench-gpu}
py=${PYTHON:-python3}
model="$work/wide-q8_0-q4_k.gguf"
mkdir -p "$work"
if [ ! -f "$model" ]; then
    echo "== widening models/hobbit-mixtral-tiny (expert FFN 32768)"
    "$py" -m training.widen models/hobbit-mixtral-tiny "$work/wide-hf" --expert-ffn 32768
    echo "== converting to q8_0 + q4_k"
    HOBBIT_LIB_DIR="$PWD/$build/bin" "$py" -m convert convert "$work/wide-hf" --bits 8,q4_k -o "$model"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== hobbit-gpu bench $model (budget ${BUDGET:-0.25})"
"$build/bin/hobbit-gpu" bench "$model" "$model" "${BUDGET:-0.25}" "${N_GEN:-128}" "${RUNS:-3}" "${THREADS:-$(nproc)}"
