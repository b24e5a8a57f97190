#!/usr/bin/env bash
# Copy what a CUDA build of HOBBIT needs from vendor/llama.cpp into .carry/llama.cpp (ignored
# by git), small enough to travel to a GPU machine with the working tree: no git history, no
# models, docs or other backends, and of the tools only llama-completion and llama-bench; with
# the HF converter (convert_hf_to_gguf.py, conversion/, gguf-py/) for `hobbit convert` there.
#
#   scripts/prune-cuda-src.sh [DEST]      (default .carry/llama.cpp)
set -euo pipefail
cd "$(dirname "$0")/.."
src=vendor/llama.cpp
dest=${1:-.carry/llama.cpp}
[ -d "$src/ggml" ] || { echo "prune-cuda-src: $src is missing; run make vendor" >&2; exit 1; }
rm -rf "$dest"
mkdir -p "$dest"
tar -C "$src" -cf - \
    --exclude=.git --exclude='ggml/src/ggml-vulkan' --exclude='ggml/src/ggml-sycl' \
    --exclude='ggml/src/ggml-opencl' --exclude='ggml/src/ggml-metal' --exclude='ggml/src/ggml-hexagon' \
    --exclude='ggml/src/ggml-et' --exclude='ggml/src/ggml-cann' --exclude='ggml/src/ggml-musa' \
    --exclude='ggml/src/ggml-webgpu' --exclude='ggml/src/ggml-zdnn' --exclude='ggml/src/ggml-openvino' \
    CMakeLists.txt cmake ggml src include common vendor tests tools/completion tools/llama-bench LICENSE \
    convert_hf_to_gguf.py conversion gguf-py \
    | tar -C "$dest" -xf -
# the tools this build makes; llama.cpp's own list names every tool
printf 'llama_add_compile_flags()\nadd_subdirectory(completion)\nadd_subdirectory(llama-bench)\n' \
    > "$dest/tools/CMakeLists.txt"
du -sh "$dest"
