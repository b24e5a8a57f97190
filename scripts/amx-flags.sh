#!/usr/bin/env bash
# Compiler flags that keep AMX out of a -march=native build (nothing where -march=native has no
# AMX). The pinned llama.cpp's AMX kernels crash with SIGILL on the first tile instruction when
# built by GCC 12 on a CPU with AMX: their tile configuration is a local array the compiler may
# drop, as _tile_loadconfig does not tell it that it reads the memory, so the tiles are used
# unconfigured (seen on Sapphire Rapids: stock llama-completion dies in tinygemm_kernel_amx on a
# q8_0 model's prompt; llama.cpp PR #26954 fixes it upstream). AMX only serves matmuls of weights
# in its own buffers on the CPU, never the routed experts' mul_mat_id, so stock and HOBBIT lose
# the same thing. Used by the Makefile and scripts/test-cuda.sh for every build.
set -u
echo | "${CC:-cc}" -march=native -dM -E - 2>/dev/null | grep -q '__AMX_TILE__' || exit 0
echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
