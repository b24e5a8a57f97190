#!/usr/bin/env bash
# Run the expert cache's I/O and policy code under AddressSanitizer and ThreadSanitizer:
# the mul_mat_id CPU test, then generation with a budget small enough to evict and reload
# constantly, through llama-completion of build-asan/ and build-tsan/.
set -euo pipefail
cd "$(dirname "$0")/.."

model=out/sanitize-mixtral-q8_0-q4_0.gguf
if [ ! -f "$model" ]; then
    mkdir -p out
    .venv/bin/python -m hobbit_py.fixtures "$model.tmp" --arch mixtral --expert-types q8_0,q4_0 >/dev/null
    mv "$model.tmp" "$model"
fi

run() {  # $1: build dir
    echo "== $1: test-hobbit-mmid"
    "$1/bin/test-hobbit-mmid" | tail -1
    for budget in 300000 1000000; do
        echo "== $1: llama-completion, expert budget $budget bytes"
        "$1/bin/llama-completion" -m "$model" -p "The quick brown fox jumps over the lazy dog" \
            -n 24 -t 2 -no-cnv --temp 0 --no-warmup -b 8 -ub 8 \
            --override-kv "hobbit.budget_bytes=int:$budget" 2>"$1/sanitize.log" >/dev/null \
            || { tail -40 "$1/sanitize.log"; exit 1; }
        grep -q "hobbit expert cache" "$1/sanitize.log" || { echo "HOBBIT mode did not engage"; exit 1; }
        echo "ok"
    done
}

ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 run build-asan
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 run build-tsan
echo "sanitizers: all clean"
