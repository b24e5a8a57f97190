#!/usr/bin/env bash
# Run the expert cache's I/O and policy code under AddressSanitizer and ThreadSanitizer:
# - ASan: the slot and policy unit tests, the mul_mat_id CPU test, generation through
#   llama-completion with budgets small enough to evict and reload constantly (2 compute
#   threads), and the concurrency test;
# - TSan: the worker pool's and the CPU experts' tests (the GPU tier's CPU path, on HOBBIT's
#   own workers), and the concurrency test (two contexts of one model decoding at once on two
#   threads, waiting for each other's pins, while a third reads statistics and rewrites the
#   policy) with one compute thread per context. ggml's CPU threadpool hands work to its threads with
#   fences that TSan does not model, so multi-threaded compute reports races in stock ggml ops
#   (flash attention's work buffer); those runs say nothing about our code.
set -euo pipefail
cd "$(dirname "$0")/.."

# six MoE layers, so that prefetches three layers ahead have layers to take room from
model=out/sanitize-mixtral6-q8_0-q4_0.gguf
if [ ! -f "$model" ]; then
    mkdir -p out
    .venv/bin/python -m hobbit_py.fixtures "$model.tmp" --arch mixtral --layers 6 --expert-types q8_0,q4_0 >/dev/null
    mv "$model.tmp" "$model"
fi

complete_with_budget() {  # $1: build dir, $2: budget bytes
    echo "== $1: llama-completion, expert budget $2 bytes"
    "$1/bin/llama-completion" -m "$model" -p "The quick brown fox jumps over the lazy dog" \
        -n 24 -t 2 -no-cnv --temp 0 --no-warmup -b 8 -ub 8 -v \
        --override-kv "hobbit.budget_bytes=int:$2" 2>"$1/sanitize.log" >/dev/null \
        || { tail -40 "$1/sanitize.log"; exit 1; }
    grep -q "hobbit expert cache" "$1/sanitize.log" || { echo "HOBBIT mode did not engage"; exit 1; }
    echo "ok"
}

concurrent() {  # $1: build dir, $2: compute threads, $3: budget bytes
    echo "== $1: test-hobbit-mt (two contexts at once, $2 compute thread(s) each, budget $3)"
    "$1/bin/test-hobbit-mt" "$model" "$3" "$2" 2 2>"$1/sanitize-mt.log" \
        || { tail -60 "$1/sanitize-mt.log"; exit 1; }
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
for t in test-hobbit-slots test-hobbit-policy test-hobbit-mmid test-hobbit-cpu-expert test-hobbit-workers; do
    echo "== build-asan: $t"; "build-asan/bin/$t" | tail -1
done
complete_with_budget build-asan 300000
complete_with_budget build-asan 1000000
concurrent build-asan 2 300000
concurrent build-asan 2 1000000

export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1
echo "== build-tsan: test-hobbit-workers"; build-tsan/bin/test-hobbit-workers | tail -1
# the CPU experts op's two passes on four of HOBBIT's own workers (no OpenMP in this build)
echo "== build-tsan: test-hobbit-cpu-expert"; build-tsan/bin/test-hobbit-cpu-expert | tail -1
concurrent build-tsan 1 300000
concurrent build-tsan 1 1000000
echo "sanitizers: all clean"
