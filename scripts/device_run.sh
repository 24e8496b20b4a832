#!/usr/bin/env bash
# One device call: build, GPU test grid, Python tests, sanitizers, quick check, benchmark.
#
#   scripts/device_run.sh [all|test|bench|quick|kvcache|fp8]   (default all;
#   quick: the gpu_bench check and the benchmark, no test grid, no
#   sanitizers; profile: ncu on one benchmark point, SASS of the hdim-128
#   forward; kvcache: the gpu_bench check, the KV-cache test families and
#   bench/kvcache_bench.py on KVCACHE_SHAPES; fp8: bench/fp8_bench.py's
#   check, the FP8 test families on sm90 / auto with memcheck and
#   racecheck, the Python FP8 tests, the FP8 quantizer's test, and
#   fp8_bench.py's accuracy and speed, FP8_BENCH_ARGS its arguments)
#
# Env: GRID_BACKENDS (default "sm80 sm90 auto": auto runs sm80's key split on
# the smallest grids; with sm80 the grid runs again as
# an A100 and as sm_86/89 would choose the backward's tiles), SANITIZE_BACKEND (default auto:
# the sm90 kernels on an H100 where they apply), CHECK=0 skips the gpu_bench
# check, BENCH_ARGS extra benchmark arguments, FA_ARCHS (default 90-real: the device is an H100; the committed
# default FA_CUDA_ARCHS builds every arch), BUILD (default build-device),
# OUT (the device tool's result folder; default ./device-out), PREBUILT (a
# folder holding libflashattn.so and tests/test_grid built elsewhere, e.g. on
# the development machine with FA_CUDA_ARCHS=90-real and carried to the
# device: skips the build there).
# Writes logs and JSON under $OUT; prints a short summary last. Time on an
# H100: the tests and sanitizers ~3-4 min, the benchmark ~7 min per
# backend and pass with the default peers (FA2, cuDNN, the GEMM ceiling;
# gpu_bench's balanced order with 150 ms warm-ups), so
# `all` nears the device tool's 10-minute call limit: `test` and `bench`
# in separate calls, or the grid in parts (BENCH_ARGS="--dims 64 128").
set -u
MODE=${1:-all}
OUT=${OUT:-$PWD/device-out}
BUILD=${BUILD:-build-device}
mkdir -p "$OUT"
summary=()
note() { summary+=("$1"); echo "== $1"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader || true
start=$(date +%s)
configure() {
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DFA_CUDA_ARCHS="${FA_ARCHS:-90-real}" "$@" \
        >> "$OUT/build.log" 2>&1 && cmake --build "$BUILD" -j16 >> "$OUT/build.log" 2>&1
}
if [ -n "${PREBUILT:-}" ]; then
    BUILD=$PREBUILT
    [ -f "$BUILD/libflashattn.so" ] || { echo "PREBUILT=$BUILD has no libflashattn.so"; exit 1; }
    export LD_LIBRARY_PATH=$PWD/$BUILD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    note "prebuilt binaries from $BUILD"
else
    # The tests are written in parallel: if they do not build, build the library alone.
    configure -DFA_BUILD_TESTS=ON || { note "tests do not build; library only"; configure -DFA_BUILD_TESTS=OFF; }
    rc=$?
    grep -E "error|spill" "$OUT/build.log" | head -20
    note "build rc=$rc in $(( $(date +%s) - start ))s"
    [ $rc -eq 0 ] || { tail -30 "$OUT/build.log"; printf '%s\n' "${summary[@]}"; exit 1; }
fi

export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$BUILD/libflashattn.so PYTHONUNBUFFERED=1
GRID=$(ls "$BUILD"/tests/test_grid 2>/dev/null)

if [ "$MODE" != bench ] && [ "$MODE" != profile ] && [ "${CHECK:-1}" != 0 ]; then
    python3 bench/gpu_bench.py check 2>&1 | tee "$OUT/check.log"
    note "gpu_bench check rc=${PIPESTATUS[0]}: $(tail -1 "$OUT/check.log")"
fi
if [ "$MODE" = all ] || [ "$MODE" = test ]; then
    # the binding's suite on CPU and CUDA (kvcache rotary / paged, autograd,
    # dropout, varlen ...), where the device's Python has pytest
    if python3 -c "import pytest" 2>/dev/null; then
        PYTHONPATH=$PWD/python:$PWD/python/tests PYTHONDONTWRITEBYTECODE=1 timeout 300 \
            python3 -m pytest -p no:cacheprovider -q python/tests > "$OUT/pytest.log" 2>&1
        note "python tests (cpu, cuda) rc=$?: $(tail -1 "$OUT/pytest.log")"
    else
        note "python tests not run: no pytest in the device's Python"
    fi
    if [ -n "$GRID" ]; then
        for backend in ${GRID_BACKENDS:-sm80 sm90 auto}; do
            timeout 240 "$GRID" --device cuda --backend $backend > "$OUT/grid-$backend.log" 2>&1
            rc=$?
            grep -E "FAIL|fail" "$OUT/grid-$backend.log" | head -15
            note "test_grid --device cuda --backend $backend rc=$rc: $(tail -1 "$OUT/grid-$backend.log")"
        done
        # the sm80 backward's tile choices of GPUs with less shared memory
        # (A100, sm_86/89), on this one
        if [[ " ${GRID_BACKENDS:-sm80 sm90 auto} " == *" sm80 "* ]]; then
            for limit in 166912 101376; do
                FA_SM80_SMEM_LIMIT=$limit timeout 240 "$GRID" --device cuda --backend sm80 \
                    > "$OUT/grid-sm80-smem$limit.log" 2>&1
                note "test_grid sm80 with FA_SM80_SMEM_LIMIT=$limit rc=$?: $(tail -1 "$OUT/grid-sm80-smem$limit.log")"
            done
            # the last-wave split on every case that can take it
            FA_SM80_FWD_SPLIT=3 FA_SM80_BWD_SPLIT=3 timeout 240 "$GRID" --device cuda --backend sm80 \
                > "$OUT/grid-sm80-split3.log" 2>&1
            note "test_grid sm80 with FA_SM80_FWD_SPLIT=3 FA_SM80_BWD_SPLIT=3 rc=$?: $(tail -1 "$OUT/grid-sm80-split3.log")"
        fi
        for tool in memcheck racecheck; do
            timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 "$GRID" --device cuda \
                --backend ${SANITIZE_BACKEND:-auto} --quick > "$OUT/sanitizer-$tool.log" 2>&1
            rc=$?
            grep -E "ERROR SUMMARY|Invalid|hazard" "$OUT/sanitizer-$tool.log" | head -5
            note "compute-sanitizer $tool rc=$rc: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.log" | tail -1)"
        done
    else
        note "no $BUILD/tests/test_grid: grid tests not run"
        for tool in memcheck racecheck; do
            timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 python3 bench/gpu_bench.py \
                check --quick > "$OUT/sanitizer-$tool.log" 2>&1
            note "compute-sanitizer $tool (gpu_bench check) rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-$tool.log" | tail -1)"
        done
    fi
fi

if [ "$MODE" = kvcache ]; then
    if [ -n "$GRID" ]; then
        for backend in sm80 sm90 auto; do for family in seqused paged decode; do
            timeout 120 "$GRID" --device cuda --backend $backend --filter $family > "$OUT/grid-$backend-$family.log" 2>&1
            note "test_grid $backend $family rc=$?: $(tail -1 "$OUT/grid-$backend-$family.log" | cut -c1-90)"
        done; done
    fi
    python3 bench/kvcache_bench.py --reps 5 --out "$OUT/kvcache.json" \
        ${KVCACHE_SHAPES:-8:32:8:128:4096 64:32:8:128:1024 16:32:32:128:4096} 2>&1 | tee "$OUT/kvcache.txt"
    note "kvcache bench rc=${PIPESTATUS[0]}"
fi

if [ "$MODE" = fp8 ]; then
    python3 bench/fp8_bench.py check 2>&1 | tee "$OUT/fp8-check.log"
    note "fp8 check rc=${PIPESTATUS[0]}: $(tail -1 "$OUT/fp8-check.log")"
    if [ -n "$GRID" ]; then
        # hdim 128 transposes V in the kernel below ~3k query rows per key
        # (every grid case) and in a pass above: the first two runs force
        # each, without the key split (whose hdim-128 instance transposes in
        # the kernel), which grids of fewer tiles than SMs (most cases) run
        # on auto; the last forces 5 parts
        for run in "sm90 kernel 1" "sm90 pass 1" "auto default default" "sm90 default 5"; do
            set -- $run
            log="$OUT/grid-$1-$2-split$3-fp8.log"
            split=""; [ "$3" != default ] && split="FA_SM90_FWD_SPLIT=$3"
            env $split FA_SM90_FP8_VT=$2 timeout 200 "$GRID" --device cuda --backend $1 --filter fp8 \
                > "$log" 2>&1
            rc=$?
            grep -A3 FAIL "$log" | head -12
            note "test_grid $1 fp8 (V transposed: $2, split: $3) rc=$rc: $(tail -1 "$log" | cut -c1-100)"
        done
        for tool in memcheck racecheck; do
            for vt in kernel pass; do
                FA_SM90_FP8_VT=$vt timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 "$GRID" --device cuda \
                    --backend sm90 --quick --filter fp8 > "$OUT/sanitizer-fp8-$vt-$tool.log" 2>&1
                note "compute-sanitizer $tool fp8 (V transposed: $vt) rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer-fp8-$vt-$tool.log" | tail -1)"
            done
        done
    fi
    PYTHONPATH=$PWD/python:$PWD/python/tests PYTHONDONTWRITEBYTECODE=1 timeout 200 python3 -m pytest \
        -p no:cacheprovider -q python/tests/test_fp8.py python/tests/test_fa3_interface.py > "$OUT/pytest-fp8.log" 2>&1
    note "python FP8 / FA3-interface tests rc=$?: $(tail -1 "$OUT/pytest-fp8.log")"
    QUANT=$(ls "$BUILD"/tests/test_quant 2>/dev/null)
    if [ -n "$QUANT" ]; then
        timeout 120 "$QUANT" > "$OUT/test-quant.log" 2>&1
        note "test_quant rc=$?: $(tail -1 "$OUT/test-quant.log")"
    fi
    python3 bench/fp8_bench.py accuracy --out "$OUT/fp8-accuracy.json" 2>&1 | tee "$OUT/fp8-accuracy.log"
    note "fp8 accuracy rc=${PIPESTATUS[0]}"
    python3 bench/fp8_bench.py bench --out "$OUT/fp8-bench.json" ${FP8_BENCH_ARGS:-} 2>&1 | tee "$OUT/fp8-bench.log"
    note "fp8 bench rc=${PIPESTATUS[0]}"
fi

if [ "$MODE" != test ] && [ "$MODE" != profile ] && [ "$MODE" != kvcache ] && [ "$MODE" != fp8 ]; then
    python3 bench/gpu_bench.py bench --out "$OUT/gpu-bench.json" --plot "$OUT/gpu-bench.png" \
        ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | grep -v '^{'
    note "bench rc=${PIPESTATUS[0]}"
fi
[ "$MODE" = profile ] || { echo "==== summary"; printf '%s\n' "${summary[@]}"; }

# Profile mode: ncu sections of the sm80 kernels on one benchmark point, and
# their SASS (PROFILE_ARGS, default hdim 128, seqlen 4096).
if [ "$MODE" = profile ]; then
    ncu --kernel-name regex:"forward_kernel|backward_kernel" --launch-count 2 \
        --section SpeedOfLight --section WarpStateStats --section SchedulerStats \
        --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis_Tables \
        python3 bench/gpu_bench.py profile ${PROFILE_ARGS:---dims 128 --seqlens 4096} \
        > "$OUT/ncu.log" 2>&1
    note "ncu rc=$?"
    grep -E "Duration|Throughput|Registers|Achieved Occupancy|Stall|Issued Ipc|Bank|No Eligible|One or More|Theoretical Occ|smsp__pcsamp|Warp Cycles" "$OUT/ncu.log" | head -60
    cuobjdump -sass -fun '_ZN2fa14forward_kernelI13__nv_bfloat16Li128EEEvNS_11ForwardArgsE' \
        "$BUILD"/CMakeFiles/flashattn_cuda.dir/src/cuda/sm80/forward.cu.o > "$OUT/fwd128.sass" 2>&1
    note "sass lines: $(wc -l < "$OUT/fwd128.sass")"
    echo "==== summary"
    printf '%s\n' "${summary[@]}"
fi
