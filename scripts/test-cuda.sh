#!/usr/bin/env bash
# HOBBIT's checks of the CUDA backend, on a machine with an NVIDIA GPU (`make test-cuda`):
#   1. build the patched llama.cpp with CUDA (+ csrc/) into $BUILD;
#   2. test-backend-ops on CUDA0 against the CPU: every MUL_MAT_ID case, and HOBBIT's
#      MUL_MAT_ID_SKIP cases (negative ids: a zero row, as on the CPU);
#   3. HOBBIT mode with the CUDA build never aborts: llama-completion at -ngl 0 and 99, with a
#      short prompt and a long one (big batches go through CUDA's batched mul_mat_id even at
#      -ngl 0), at budgets from a few slots to every expert; each run must exit 0 with the
#      cache engaged, and generate what the same binary generates on the CPU alone
#      (CUDA_VISIBLE_DEVICES=, the reference).
#
#   scripts/test-cuda.sh            (env: HOBBIT_LLAMA_DIR, BUILD, MODEL, CUDA_ARCH, JOBS)
#
# HOBBIT_LLAMA_DIR may be a pruned copy of vendor/llama.cpp (scripts/prune-cuda-src.sh), to
# carry it to a GPU machine; MODEL is a small multi-precision GGUF (default: the sanitizer's
# fixture, made by `make sanitize` or hobbit_py.fixtures).
set -uo pipefail
cd "$(dirname "$0")/.."
src=${HOBBIT_LLAMA_DIR:-$PWD/vendor/llama.cpp}
build=${BUILD:-build-cuda}
model=${MODEL:-out/sanitize-mixtral-q8_0-q4_0.gguf}
. <(sed -n 's/^\(LLAMA_CPP_PYTHON_VERSION\) *:\?= *\(.*\)$/\1=\2/p' vendor/pin.mk)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

[ -f "$model" ] || { echo "test-cuda: no model at $model (make sanitize makes it)" >&2; exit 2; }
nvidia-smi -L || { echo "test-cuda: no NVIDIA GPU here" >&2; exit 2; }

echo "== build ($build from $src)"
cmake -S csrc -B "$build" $(command -v ninja >/dev/null && echo -G Ninja) -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_IS_DEV=OFF -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DGGML_CUDA_FA=OFF \
    -DHOBBIT_LLAMA_DIR="$src" -DHOBBIT_SOURCE_ID="llama-cpp-python-${LLAMA_CPP_PYTHON_VERSION:-unknown}" \
    >"$build.configure.log" 2>&1 || { tail -30 "$build.configure.log"; exit 1; }
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target llama ggml llama-completion test-backend-ops \
    >"$build.build.log" 2>&1 || { grep -B2 -A12 -m3 "error" "$build.build.log"; exit 1; }
echo "ok"

for op in MUL_MAT_ID MUL_MAT_ID_SKIP; do
    echo "== test-backend-ops -o $op -b CUDA0"
    "$build/bin/test-backend-ops" -o "$op" -b CUDA0 >"$build.$op.log" 2>&1
    rc=$?
    grep -E "tests passed|Backend CUDA0:|backends passed" "$build.$op.log" | tail -3
    grep -F "[FAIL]" "$build.$op.log" | head -10
    [ $rc -eq 0 ] || fail "test-backend-ops $op (exit $rc)"
done

long=$(for i in $(seq 1 40); do printf 'The documentation explains how the database server stores tables on disk. '; done)
for ngl in 0 99; do
    for budget in 300000 1000000 100000000; do
        for prompt in short long; do
            text="The quick brown fox"; [ $prompt = long ] && text=$long
            log="$build.completion-ngl$ngl-$budget-$prompt.log"
            out=$("$build/bin/llama-completion" -m "$model" -p "$text" -n 16 -t 4 -no-cnv --temp 0 \
                --no-warmup -ngl $ngl -c 2048 -b 512 -ub 512 -v \
                --override-kv "hobbit.budget_bytes=int:$budget" 2>"$log")
            rc=$?
            engaged=$(grep -c "hobbit expert cache" "$log")
            echo "== llama-completion -ngl $ngl budget $budget $prompt prompt: exit $rc, cache engaged: $engaged, tail: ${out: -60}"
            [ $rc -eq 0 ] || { tail -15 "$log"; fail "llama-completion -ngl $ngl budget $budget $prompt (exit $rc)"; }
            [ "$engaged" -gt 0 ] || fail "HOBBIT mode did not engage (-ngl $ngl budget $budget)"
            ref=$(CUDA_VISIBLE_DEVICES= "$build/bin/llama-completion" -m "$model" -p "$text" -n 16 -t 4 -no-cnv \
                --temp 0 --no-warmup -c 2048 -b 512 -ub 512 --override-kv "hobbit.budget_bytes=int:$budget" 2>/dev/null)
            [ "$out" == "$ref" ] || fail "-ngl $ngl budget $budget $prompt: differs from the CPU (cpu: ${ref: -40})"
        done
    done
done

[ $failures -eq 0 ] && echo "test-cuda: all passed" || echo "test-cuda: $failures failure(s)"
exit $(( failures > 0 ))
