#!/usr/bin/env bash
# HOBBIT's checks of the CUDA backend, on a machine with an NVIDIA GPU (`make test-cuda`):
#   1. build the patched llama.cpp with CUDA (+ csrc/) into $BUILD;
#   2. test-backend-ops on CUDA0 against the CPU: every MUL_MAT_ID case, and HOBBIT's
#      MUL_MAT_ID_SKIP cases (negative ids: a zero row, as on the CPU);
#   3. the GPU tier at a budget that holds every hi expert (ample, and exactly 100%) generates
#      what the same binary generates without HOBBIT (-ngl 99 and 0), greedy, short and
#      ~1000-token prompts;
#   4. HOBBIT mode never aborts (-ngl 0, 1, 99; budgets from a few slots to every expert; short
#      and long prompts), its counters add up and its slots stay within the budget;
#   5. a failed read of an expert on its way to VRAM fails one generation with a clean error,
#      and the others are right (LD_PRELOAD fault injector, tests/faultinject.c);
#   6. the planner computes misses on the CPU (and not when told not to; every miss on the CPU
#      at hi generates what the non-HOBBIT run does, also while warming the next layer's
#      predicted miss, and so does every miss split between the CPU and the GPU), and the unified-memory
#      path (forced: hobbit.unified=1) matches the non-HOBBIT run at a full budget.
#
#   scripts/test-cuda.sh            (env: HOBBIT_LLAMA_DIR, BUILD, MODEL, CUDA_ARCH, JOBS; SKIP_BUILD=1
#                                    uses $BUILD as it is, e.g. a build made elsewhere and carried;
#                                    BUILD_ONLY=1 stops after step 1, no GPU needed; CMAKE_ARGS adds
#                                    cmake options, e.g. -DGGML_CUDA_NO_VMM=ON without a GPU;
#                                    TARGETS overrides the build's targets and SKIP_OPS=1 skips
#                                    step 2, for a quick check of HOBBIT's own code)
#
# HOBBIT_LLAMA_DIR may be a pruned copy of vendor/llama.cpp (scripts/prune-cuda-src.sh), to
# carry it to a GPU machine; MODEL is a small multi-precision GGUF (default: the sanitizer's
# fixture, made by `make sanitize` or hobbit_py.fixtures).
set -uo pipefail
cd "$(dirname "$0")/.."
src=${HOBBIT_LLAMA_DIR:-$PWD/vendor/llama.cpp}
build=$(realpath -m "${BUILD:-build-cuda}")
model=${MODEL:-out/sanitize-mixtral-q8_0-q4_0.gguf}
. <(sed -n 's/^\(LLAMA_CPP_PYTHON_VERSION\) *:\?= *\(.*\)$/\1=\2/p' vendor/pin.mk)
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

if [ -z "${BUILD_ONLY:-}" ]; then
    [ -f "$model" ] || { echo "test-cuda: no model at $model (make sanitize makes it)" >&2; exit 2; }
    nvidia-smi -L || { echo "test-cuda: no NVIDIA GPU here" >&2; exit 2; }
fi

if [ -n "${SKIP_BUILD:-}" ] && [ -x "$build/bin/hobbit-gpu" ]; then
    echo "== build: $build as it is (SKIP_BUILD)"
else
echo "== build ($build from $src)"
# no AMX where -march=native has it: the pinned tree's AMX kernels crash when GCC builds them
amx_off=$(scripts/amx-flags.sh)
export CFLAGS="${CFLAGS:-} $amx_off" CXXFLAGS="${CXXFLAGS:-} $amx_off"
cmake -S csrc -B "$build" $(command -v ninja >/dev/null && echo -G Ninja) -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_IS_DEV=OFF -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DGGML_CUDA_FA=OFF \
    -DHOBBIT_LLAMA_DIR="$src" -DHOBBIT_SOURCE_ID="llama-cpp-python-${LLAMA_CPP_PYTHON_VERSION:-unknown}" \
    ${CMAKE_ARGS:-} >"$build.configure.log" 2>&1 || { tail -30 "$build.configure.log"; exit 1; }
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target ${TARGETS:-llama ggml llama-completion test-backend-ops hobbit-gpu hobbit-cpu-bench} \
    >"$build.build.log" 2>&1 || { grep -B2 -A12 -m3 "error" "$build.build.log"; exit 1; }
echo "ok"
fi
[ -z "${BUILD_ONLY:-}" ] || exit 0

for op in $([ -n "${SKIP_OPS:-}" ] || echo MUL_MAT_ID MUL_MAT_ID_SKIP); do
    echo "== test-backend-ops -o $op -b CUDA0"
    "$build/bin/test-backend-ops" -o "$op" -b CUDA0 >"$build.$op.log" 2>&1
    rc=$?
    grep -E "tests passed|Backend CUDA0:|backends passed" "$build.$op.log" | tail -3
    grep -F "[FAIL]" "$build.$op.log" | head -10
    [ $rc -eq 0 ] || fail "test-backend-ops $op (exit $rc)"
done

# hobbit-gpu check: one line per generation (`gen A short|long ok: ids` or `... error: msg`) and
# a stats line; it fails by itself when the counters disagree, the slots exceed the budget or the
# tier is not the one -ngl asks for
check() { # LOGNAME NGL BUDGET ATTEMPTS [kv...]
    local name=$1; shift
    "$build/bin/hobbit-gpu" check "$model" "$@" >"$build.$name.out" 2>"$build.$name.log"
    local rc=$?
    echo "== hobbit-gpu check $* -> exit $rc"
    grep -E "^(gen|stats|FAIL|load)" "$build.$name.out" | cut -c1-240
    [ $rc -eq 0 ] || { tail -5 "$build.$name.log"; fail "hobbit-gpu check $* (exit $rc)"; }
    return $rc
}
gens() { grep -E "^gen 0 (short|long)" "$build.$1.out"; }

# 3. with a budget that holds every hi expert (hi only), the GPU tier generates what the same
#    binary generates without HOBBIT (experts resident in VRAM, llama.cpp's own path): with
#    each expert placed once at load and indexed by the graph (no loads while it runs), and
#    served by the route op as any budget is (hobbit.resident=0)
check stock-ngl99 99 0 1
check hobbit-full-ngl99 99 100000000 1 hobbit.lo_type=none hobbit.prefetch_depth=0
[ "$(gens stock-ngl99)" == "$(gens hobbit-full-ngl99)" ] && [ -n "$(gens stock-ngl99)" ] \
    && echo "ok: equal to the non-HOBBIT run" || fail "full budget at -ngl 99 differs from the non-HOBBIT run"
grep -q "^stats: tier 1 (resident), .* + loads 0/0 +" "$build.hobbit-full-ngl99.out" \
    && echo "ok: every expert resident, none loaded while running" \
    || fail "a full budget at -ngl 99 loaded experts while running (not resident)"
check routed-full-ngl99 99 100000000 1 hobbit.lo_type=none hobbit.prefetch_depth=0 hobbit.resident=0
grep -qE "\(resident\)|\+ loads 0/0 \+" "$build.routed-full-ngl99.out" && fail "hobbit.resident=0 did not route"
[ "$(gens stock-ngl99)" == "$(gens routed-full-ngl99)" ] \
    && echo "ok: routed (hobbit.resident=0) equal to the non-HOBBIT run" || fail "full budget, routed, differs from the non-HOBBIT run"
# exactly 100% (the hi experts' bytes) holds every one of them at hi with the default policy:
# no lo load, and the same tokens
check hobbit-100pct-ngl99 99 100% 1
grep -qE "loads [0-9]+/0 " "$build.hobbit-100pct-ngl99.out" && [ "$(gens stock-ngl99)" == "$(gens hobbit-100pct-ngl99)" ] \
    && echo "ok: 100% holds every hi expert, equal to the non-HOBBIT run" \
    || fail "100% at -ngl 99 loaded at lo or differs from the non-HOBBIT run"
# a policy that never loads hi is refused cleanly where it cannot apply: by resident experts, and
# (routed) by those 100% slots, whole hi blocks with no lo slots, as the fixture's experts are not
# whole blocks of both types (q8_0 and q4_0)
for mode in 1 0; do
    "$build/bin/hobbit-gpu" check "$model" 99 100% 1 hobbit.resident=$mode policy.hi_threshold=2 \
        >"$build.lo-only-100pct-$mode.out" 2>"$build.lo-only-100pct-$mode.log"
    why=$([ $mode = 1 ] && echo "resident in VRAM" || echo "no lo slots")
    grep -q "^policy error: .*$why" "$build.lo-only-100pct-$mode.out" && echo "ok: lo only refused at 100% ($why)" \
        || fail "a lo-only policy at 100% (resident=$mode) was not refused: $(grep -E '^(gen|policy|stats)' "$build.lo-only-100pct-$mode.out" | head -2)"
done
# unified memory forced (an H100 is not integrated: this exercises the path a Jetson takes by
# itself): the GPU reads pinned host slots that the loader reads the file into, no copies
check unified-full-ngl99 99 100000000 1 hobbit.lo_type=none hobbit.prefetch_depth=0 hobbit.unified=1
grep -q "tier 1 (unified memory)" "$build.unified-full-ngl99.out" || fail "hobbit.unified=1 did not take the unified path"
[ "$(gens stock-ngl99)" == "$(gens unified-full-ngl99)" ] \
    && echo "ok: unified memory equal to the non-HOBBIT run" || fail "unified memory at a full budget differs from the non-HOBBIT run"
# at -ngl 0 only the short prompt: llama.cpp offloads a long prompt's expert matmuls to the GPU,
# HOBBIT computes its host slots where they are (the CPU), and the two round differently
check stock-ngl0 0 0 1
check hobbit-full-ngl0 0 100000000 1 hobbit.lo_type=none hobbit.prefetch_depth=0
[ "$(gens stock-ngl0 | grep short)" == "$(gens hobbit-full-ngl0 | grep short)" ] \
    && echo "ok: equal to the non-HOBBIT run (short prompt)" || fail "full budget at -ngl 0 differs from the non-HOBBIT run"

# 4. never aborts, whatever -ngl, the budget and the prompt's length; counters consistent
for ngl in 0 1 99; do
    for budget in 300000 25% 100000000; do
        check "mixed-ngl$ngl-${budget%\%}" $ngl $budget 2 || true
        grep -q "error:" "$build.mixed-ngl$ngl-${budget%\%}.out" && fail "a generation failed (-ngl $ngl, budget $budget)"
    done
done

# the planner computed some of the decode's misses on the CPU (at -ngl 99, 25%), and with it
# off none; unified memory at 25% never aborts either
cpu_routes() { sed -n 's/.* + cpu \([0-9]*\)\/\([0-9]*\),.*/\1 \2/p' "$build.$1.out" | awk '{print $1 + $2}'; }
[ "${cpu_routes_ngl99:=$(cpu_routes mixed-ngl99-25)}" -gt 0 ] 2>/dev/null \
    && echo "ok: $cpu_routes_ngl99 routes computed on the CPU at -ngl 99, 25%" || fail "no route computed on the CPU at 25%"
check nocpu-ngl99-25 99 25% 1 hobbit.cpu_compute=0 || true
[ "$(cpu_routes nocpu-ngl99-25)" == "0" ] && echo "ok: none with hobbit.cpu_compute=0" || fail "CPU routes with cpu_compute=0"
# the CPU path's experts (hobbit-cpu-expert.h) are the GPU's: every miss computed on the CPU at
# hi (cpu_compute 2, hi only) generates what the non-HOBBIT run does
check cpuall-ngl99-25 99 25% 1 hobbit.lo_type=none hobbit.prefetch_depth=0 hobbit.cpu_compute=2 || true
[ "$(cpu_routes cpuall-ngl99-25)" -gt 0 ] 2>/dev/null && [ "$(gens stock-ngl99)" == "$(gens cpuall-ngl99-25)" ] \
    && echo "ok: $(cpu_routes cpuall-ngl99-25) routes on the CPU, equal to the non-HOBBIT run" \
    || fail "every miss on the CPU at hi differs from the non-HOBBIT run (or none went there)"
# warming (hobbit.warm=1, 2 with pinned workers; off by default): once a layer is served the
# workers read the next layer's predicted CPU miss into their caches, and the CPU experts op has
# each compute the part it read; every miss on the CPU at hi then generates what the non-HOBBIT
# run does, a warmed expert was used, nothing is warmed where the CPU computes no miss
# (cpu_compute 0), and at the default policy it runs without error
warm_counts() { sed -n 's/.*, warm \([0-9]*\/[0-9]*\), split.*/\1/p' "$build.$1.out" | tail -1; }
[ "$(warm_counts cpuall-ngl99-25)" == "0/0" ] || fail "warmed by default"
for w in 1 2; do
    check warm$w-ngl99-25 99 25% 1 hobbit.lo_type=none hobbit.prefetch_depth=0 hobbit.cpu_compute=2 hobbit.warm=$w || true
    warm_used=$(warm_counts warm$w-ngl99-25 | cut -d/ -f2)
    [ "${warm_used:-0}" -gt 0 ] 2>/dev/null && [ "$(gens stock-ngl99)" == "$(gens warm$w-ngl99-25)" ] \
        && echo "ok: hobbit.warm=$w: warmed/used $(warm_counts warm$w-ngl99-25), every miss on the CPU, equal to the non-HOBBIT run" \
        || fail "hobbit.warm=$w: differs from the non-HOBBIT run (or no warmed expert was computed)"
done
check warmnocpu-ngl99-25 99 25% 1 hobbit.cpu_compute=0 hobbit.warm=1 || true
[ "$(warm_counts warmnocpu-ngl99-25)" == "0/0" ] && echo "ok: nothing warmed with hobbit.cpu_compute=0" \
    || fail "warmed with hobbit.cpu_compute=0"
check warmdefault-ngl99-25 99 25% 2 hobbit.warm=1 && echo "ok: warmed/used $(warm_counts warmdefault-ngl99-25) at the default policy"
# a split miss (hobbit.split): the CPU computes an expert's first rows, the GPU the others over
# views of the pools, from a slot whose rows the GPU reads were copied first; every miss split
# (cpu_compute 3) at hi generates what the non-HOBBIT run does, and with lo too it never fails
split_routes() { sed -n 's/.*, split \([0-9]*\)$/\1/p' "$build.$1.out" | tail -1; }
check splitall-ngl99-25 99 25% 1 hobbit.lo_type=none hobbit.prefetch_depth=0 hobbit.cpu_compute=3 hobbit.split=1 || true
[ "$(split_routes splitall-ngl99-25)" -gt 0 ] 2>/dev/null && [ "$(gens stock-ngl99)" == "$(gens splitall-ngl99-25)" ] \
    && echo "ok: $(split_routes splitall-ngl99-25) routes split, equal to the non-HOBBIT run" \
    || fail "every miss split at hi differs from the non-HOBBIT run (or none was split)"
# ... and so it does with the CPU's share of a split at 62% (hobbit.split_cpu_pct)
check split62-ngl99-25 99 25% 1 hobbit.lo_type=none hobbit.prefetch_depth=0 hobbit.cpu_compute=3 hobbit.split=1 \
    hobbit.split_cpu_pct=62 || true
[ "$(split_routes split62-ngl99-25)" -gt 0 ] 2>/dev/null && [ "$(gens stock-ngl99)" == "$(gens split62-ngl99-25)" ] \
    && echo "ok: $(split_routes split62-ngl99-25) routes split 62/38, equal to the non-HOBBIT run" \
    || fail "every miss split 62/38 at hi differs from the non-HOBBIT run (or none was split)"
check splitmixed-ngl99-25 99 25% 2 hobbit.cpu_compute=3 hobbit.split=1 || true
[ "$(split_routes splitmixed-ngl99-25)" -gt 0 ] 2>/dev/null && ! grep -q "error:" "$build.splitmixed-ngl99-25.out" \
    && echo "ok: $(split_routes splitmixed-ngl99-25) routes split with hi and lo" || fail "split with hi and lo failed"
check planner-split-ngl99-25 99 25% 1 hobbit.split=1 || true
echo "the planner split $(split_routes planner-split-ngl99-25) routes at 25% with hobbit.split=1"
[ "$(split_routes mixed-ngl99-25)" == "0" ] && echo "ok: none split by default (hobbit.split=0)" || fail "split routes by default"
check splitnone-ngl99-25 99 25% 1 hobbit.lo_type=none hobbit.prefetch_depth=0 hobbit.cpu_compute=3 || true
[ "$(split_routes splitnone-ngl99-25)" == "0" ] && echo "ok: cpu_compute 3 splits nothing without hobbit.split=1" \
    || fail "cpu_compute 3 split routes with hobbit.split=0"
check unified-ngl99-25 99 25% 2 hobbit.unified=1 || true
grep -q "error:" "$build.unified-ngl99-25.out" && fail "a generation failed (unified memory, 25%)"

# 5. a failed read on the way to VRAM (host tier off: each copy reads the file) fails one
#    generation with a clean error; the process lives on and the next generations are right
cc -shared -fPIC -O1 -o "$build.faultinject.so" tests/faultinject.c -ldl || fail "building the fault injector"
check nofault 99 25% 1 hobbit.host_tier=0 hobbit.lo_type=none hobbit.prefetch_depth=0
LD_PRELOAD="$build.faultinject.so" HOBBIT_FAULT_PATH="$(basename "$model")" HOBBIT_FAULT_MODE=eio \
    HOBBIT_FAULT_AFTER=7 HOBBIT_FAULT_COUNT=1 \
    check fault 99 25% 3 hobbit.host_tier=0 hobbit.lo_type=none hobbit.prefetch_depth=0
n_err=$(grep -c "error: .*Input/output error" "$build.fault.out")
n_ok=$(grep -c "^gen .* ok:" "$build.fault.out")
bad=$(grep "^gen .* ok:" "$build.fault.out" | while read -r g a p ok ids; do
    grep -qxF "gen 0 $p ok: $ids" "$build.nofault.out" || echo "$a $p"; done)
[ "$n_err" -eq 1 ] && [ "$n_ok" -eq 5 ] && [ -z "$bad" ] && echo "ok: one clean failure, five right generations" \
    || fail "fault on the host tier: $n_err errors, $n_ok ok, wrong: $bad"

[ $failures -eq 0 ] && echo "test-cuda: all passed" || echo "test-cuda: $failures failure(s)"
exit $(( failures > 0 ))
