#!/usr/bin/env bash
# Pack what a GPU machine with no package index needs to test and bench HOBBIT's CUDA tier from
# a CUDA build made here (a machine with nvcc but maybe no GPU), for scripts/gpu-remote.sh:
#
#   .carry/bc-a.tar.xz   $BUILD/bin: hobbit-gpu, libllama, libggml*, test-backend-ops (build A)
#   .carry/bc-b.tar.xz   with B=DIR: DIR/bin's libllama and hobbit-gpu (build B, over A's files)
#   .carry/conv.tar.xz   the converter's files of vendor/llama.cpp and its GPT-2 vocabulary
#   .whl/                wheels of the Python packages the converter needs besides torch
#
#   scripts/gpu-pack.sh [--build]    (env: BUILD=build-cuda, B, CUDA_ARCH=90, PY_VERSION=3.12)
#   scripts/gpu-pack.sh --source     .carry/src.tar.xz instead of builds: vendor/llama.cpp pruned
#                                    (scripts/prune-cuda-src.sh), which gpu-remote.sh builds there
#                                    (16 cores: minutes, where this 2-core machine takes an hour);
#                                    with B_REV=REV also .carry/csrc-b.tar.xz, csrc/ of commit REV,
#                                    which gpu-remote.sh builds as build B (an A/B of the engine)
#
# --build first builds $BUILD with scripts/test-cuda.sh (BUILD_ONLY=1), with
# GGML_CUDA_NO_VMM=ON (no CUDA driver library to link without a GPU). Both folders are
# ignored by git and travel with the working tree (keep it under the device's limit: the
# tracked files and these come to about 60 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build-cuda}
src=vendor/llama.cpp
[ -f "$src/convert_hf_to_gguf.py" ] || { echo "gpu-pack: $src is missing; run make vendor" >&2; exit 1; }
if [ "${1:-}" = "--source" ]; then
    mkdir -p .carry .whl
    rm -f .carry/bc-a.tar.xz .carry/bc-b.tar.xz
    tmp=$(mktemp -d)
    scripts/prune-cuda-src.sh "$tmp/llama.cpp" >/dev/null
    tar -C "$tmp/llama.cpp" -cJf .carry/src.tar.xz .
    rm -rf "$tmp"
    rm -f .carry/csrc-b.tar.xz
    if [ -n "${B_REV:-}" ]; then
        # build B: the engine's sources of that commit, built there over build A's objects
        git archive --format=tar "$B_REV" csrc | xz -9 > .carry/csrc-b.tar.xz
    fi
elif [ "${1:-}" = "--build" ]; then
    BUILD_ONLY=1 BUILD="$build" CMAKE_ARGS="-DGGML_CUDA_NO_VMM=ON -DGGML_CCACHE=ON ${CMAKE_ARGS:-}" \
        scripts/test-cuda.sh
fi
if [ "${1:-}" != "--source" ]; then
    [ -x "$build/bin/hobbit-gpu" ] || { echo "gpu-pack: no $build/bin/hobbit-gpu; run with --build" >&2; exit 1; }
    mkdir -p .carry .whl
    rm -f .carry/src.tar.xz
    (cd "$build" && tar -cJf ../.carry/bc-a.tar.xz bin/hobbit-gpu bin/hobbit-cpu-bench bin/libllama.so* bin/libllama-common.so* \
        bin/libggml* bin/test-backend-ops)
    rm -f .carry/bc-b.tar.xz
    if [ -n "${B:-}" ]; then
        (cd "$B" && tar -cJf "$OLDPWD/.carry/bc-b.tar.xz" bin/hobbit-gpu bin/libllama.so*)
    fi
fi
tar -C "$src" -cJf .carry/conv.tar.xz convert_hf_to_gguf.py conversion gguf-py models/ggml-vocab-gpt-2.gguf
py=${PY_VERSION:-3.12}
python3 -m pip download -q -d .whl --only-binary=:all: --python-version "$py" \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 typer rich pydantic tqdm pyyaml
python3 -m pip wheel -q --no-deps "$src/gguf-py" -w .whl
du -sh .carry .whl
