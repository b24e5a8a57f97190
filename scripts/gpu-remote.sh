#!/usr/bin/env bash
# On a GPU machine with no package index, from the repository root, with what
# scripts/gpu-pack.sh put in .carry/ and .whl/: install the wheels (python3 there has torch),
# unpack build A (build-a/) and, if packed, build B (build-b/: A's files with B's libllama and
# hobbit-gpu over them), make the fixture model and the widened benchmark model, then run
# scripts/test-cuda.sh on one build and hobbit-gpu bench on each (BENCHMARKS.md).
#
#   bash scripts/gpu-remote.sh
#
# With .carry/src.tar.xz (gpu-pack.sh --source) it builds build A there first, and with
# .carry/csrc-b.tar.xz (gpu-pack.sh --source, B_REV=REV) build B from that commit's csrc/.
#
# env: OUT (where logs and tables go; default /tmp/out), NO_TEST=1, NO_BENCH=1, TEST_BUILD (b if
#      packed, else a), RUNS (3), ROWS and EXTRA (HOBBIT_BENCH_ROWS / HOBBIT_BENCH_EXTRA; EXTRA_a
#      and EXTRA_b, set even empty, replace EXTRA for that build's benches: rows of keys only one knows),
#      ORDER ("a b": the benches, one build each, in this order; "a b a b" alternates),
#      SCHED_DEBUG=1 (GGML_SCHED_DEBUG=2 on a check: each split's inputs), BW=1 (the host's
#      memory bandwidth through torch: scripts/host-bw-probe.py), BENCH_TIMEOUT and TEST_TIMEOUT (s)
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl 2>&1 | grep -v -i "warning\|notice" | tail -3
mkdir -p vendor/llama.cpp && tar -C vendor/llama.cpp -xJf .carry/conv.tar.xz
if [ -f .carry/src.tar.xz ]; then
    # gpu-pack.sh --source: build A here from the pruned source (kept while the machine is warm:
    # a second call rebuilds only what changed)
    mkdir -p /tmp/hobbit-src && tar -C /tmp/hobbit-src -xJf .carry/src.tar.xz
    say "building build-a from the pruned source"
    HOBBIT_LLAMA_DIR=/tmp/hobbit-src BUILD=/tmp/hobbit-build JOBS=$(nproc) BUILD_ONLY=1 scripts/test-cuda.sh \
        || { say "build failed"; exit 1; }
    mkdir -p build-a && cp -a /tmp/hobbit-build/bin build-a/
    say "built"
    if [ -f .carry/csrc-b.tar.xz ]; then
        # build B: csrc/ of another commit (gpu-pack.sh B_REV=...), rebuilt over build A's objects
        rm -rf /tmp/hobbit-csrc-a && cp -a csrc /tmp/hobbit-csrc-a && rm -rf csrc
        tar -m -xJf .carry/csrc-b.tar.xz # -m: now as their time, so that they are rebuilt
        cmake --build /tmp/hobbit-build -j "$(nproc)" --target llama hobbit-gpu > /tmp/hobbit-build-b.log 2>&1 \
            || { tail -20 /tmp/hobbit-build-b.log; say "build B failed"; }
        rm -rf build-b && mkdir -p build-b && cp -a /tmp/hobbit-build/bin build-b/
        rm -rf csrc && cp -r /tmp/hobbit-csrc-a csrc # new times: a later build here rebuilds A
        say "built build-b: $(grep -c 'Building' /tmp/hobbit-build-b.log) objects rebuilt"
    fi
else
    # build B is build A with bc-b's files (libllama, hobbit-gpu) over it
    mkdir -p build-a && tar -C build-a -xJf .carry/bc-a.tar.xz
fi
if [ -f .carry/bc-b.tar.xz ]; then
    rm -rf build-b && cp -a build-a build-b && tar -C build-b -xJf .carry/bc-b.tar.xz
fi
say "unpacked: $(ls -d build-* | tr '\n' ' ')"
model=out/bench-gpu/wide-q8_0-q4_k.gguf
mkdir -p out/bench-gpu
if [ -z "${NO_TEST:-}" ] && [ ! -f out/sanitize-mixtral-q8_0-q4_0.gguf ]; then
    python3 -m hobbit_py.fixtures out/sanitize-mixtral-q8_0-q4_0.gguf --arch mixtral --expert-types q8_0,q4_0 >/dev/null \
        || say "fixture failed"
fi
if { [ -z "${NO_BENCH:-}" ] || [ -n "${SCHED_DEBUG:-}" ]; } && [ ! -f "$model" ]; then
    python3 -m training.widen models/hobbit-mixtral-tiny out/bench-gpu/wide-hf --expert-ffn 32768 >/dev/null 2>&1 \
        || say "widen failed"
    HOBBIT_LIB_DIR=$PWD/build-a/bin LD_LIBRARY_PATH=$PWD/build-a/bin:/usr/local/cuda/lib64 python3 -m convert convert out/bench-gpu/wide-hf \
        --bits 8,q4_k -o "$model" 2>&1 | tail -2
    ls -la "$model"
    say "bench model made"
fi
if [ -n "${BW:-}" ]; then
    python3 scripts/host-bw-probe.py --threads 16
    python3 scripts/host-bw-probe.py --threads 8 --rounds 3
    say "bandwidth probe done"
fi
tb=${TEST_BUILD:-$([ -d build-b ] && echo b || echo a)}
if [ -z "${NO_TEST:-}" ]; then
    say "test-cuda on build-$tb"
    LD_LIBRARY_PATH=$PWD/build-$tb/bin:/usr/local/cuda/lib64 SKIP_BUILD=1 BUILD=build-$tb timeout "${TEST_TIMEOUT:-300}" scripts/test-cuda.sh \
        > "$OUT/test-cuda-$tb.txt" 2>&1
    echo "test-cuda rc=$?"
    grep -E "^(FAIL|ok|==|[0-9]+/[0-9]+ tests)|passed|failures" "$OUT/test-cuda-$tb.txt" | cut -c1-200 | tail -40
    say "test-cuda done"
fi
if [ -n "${SCHED_DEBUG:-}" ]; then
    for b in a b; do
        [ -d build-$b ] || continue
        GGML_SCHED_DEBUG=2 HOBBIT_GPU_VERBOSE=1 LD_LIBRARY_PATH=$PWD/build-$b/bin:/usr/local/cuda/lib64 timeout 120 build-$b/bin/hobbit-gpu check \
            "$model" 99 25% 1 > "$OUT/sched-$b.out" 2> "$OUT/sched-$b.log"
        echo "sched debug $b: rc=$? splits per graph (first 6 graphs):"
        awk '/## SPLIT #0:/{if(n)print n; n=0} /## SPLIT/{n++} END{print n}' "$OUT/sched-$b.log" | head -6 | tr '\n' ' '; echo
        grep "## SPLIT" "$OUT/sched-$b.log" | sed -n '1,200p' | tail -30 | cut -c1-220
        xz -9 "$OUT/sched-$b.log"
    done
fi
if [ -z "${NO_BENCH:-}" ]; then
    k=0
    for b in ${ORDER:-a b}; do
        [ -d build-$b ] || continue
        k=$((k + 1))
        say "bench $k: build-$b"
        envs=(HOBBIT_BENCH_INTERLEAVE=1 LD_LIBRARY_PATH=$PWD/build-$b/bin:/usr/local/cuda/lib64)
        [ -n "${ROWS:-}" ] && envs+=("HOBBIT_BENCH_ROWS=$ROWS")
        extra_b="EXTRA_$b"; extra=${!extra_b-${EXTRA:-}} # EXTRA_a / EXTRA_b: that build's own rows
        [ -n "$extra" ] && envs+=("HOBBIT_BENCH_EXTRA=$extra")
        env "${envs[@]}" timeout "${BENCH_TIMEOUT:-400}" build-$b/bin/hobbit-gpu bench \
            "$model" "$model" 0.25 128 "${RUNS:-3}" 16 > "$OUT/bench-$k-$b.md" 2> "$OUT/bench-$k-$b.log"
        echo "bench $k $b rc=$?"
        grep -E "^\|" "$OUT/bench-$k-$b.md" | cut -d'|' -f2-4,7-9,11-16
        tail -2 "$OUT/bench-$k-$b.log"
    done
    fi
say "done"
