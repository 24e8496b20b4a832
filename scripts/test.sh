#!/usr/bin/env bash
# The test command: configure, build and run every test.
#  1. The default configuration (the CUDA backends are compiled when nvcc is
#     found; their tests skip without a GPU), all tests incl. Python.
#  2. A CPU-only AddressSanitizer + UBSan build in its own directory, the C
#     tests (the quick grid) under the sanitizers.
# Both run even if the first fails; the exit status is non-zero if either did.
#
#   scripts/test.sh [--no-sanitize]
# Environment: BUILD_DIR (build), SANITIZE_BUILD_DIR (build-asan),
#              JOBS (number of cores), PYTHON (the interpreter for the
#              Python tests; default /usr/bin/python3 if present).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
SANITIZE_BUILD_DIR=${SANITIZE_BUILD_DIR:-build-asan}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
SANITIZE=1
[ "${1:-}" = "--no-sanitize" ] && SANITIZE=0

# nvcc in its default place counts as found.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=$(command -v python3 || true); fi
fi
python_args=()
[ -n "$PYTHON" ] && python_args+=("-DPython3_EXECUTABLE=$PYTHON")

# With nvcc present the CUDA code must be compiled: CMake's CUDA detection
# has been seen to fail transiently (a vanished scratch file), which would
# quietly give a CPU-only build; retry once from a clean cache, then fail.
cuda_enabled() { # build_dir: the cache holds a CUDA compiler (not NOTFOUND)
    grep -Eq '^CMAKE_CUDA_COMPILER:[A-Z]+=.*nvcc' "$1/CMakeCache.txt"
}
configure() { # build_dir cmake_args...
    local dir=$1
    cmake -S . -B "$@" || return 1
    if [ "$want_cuda" = 1 ] && ! cuda_enabled "$dir"; then
        echo "=== nvcc is installed but CMake did not enable CUDA; reconfiguring from scratch"
        rm -rf "$dir/CMakeCache.txt" "$dir/CMakeFiles"
        cmake -S . -B "$@" || return 1
        if ! cuda_enabled "$dir"; then
            echo "=== FAILED: nvcc is installed but the build would not compile CUDA"
            return 1
        fi
    fi
}

status=0
run_config() { # name build_dir want_cuda ctest_args... -- cmake_args...
    local name=$1 dir=$2
    want_cuda=$3
    shift 3
    local ctest_args=()
    while [ "$1" != "--" ]; do ctest_args+=("$1"); shift; done
    shift
    echo "=== $name: configure + build in $dir"
    local start=$SECONDS
    if configure "$dir" "$@" &&
       cmake --build "$dir" -j "$JOBS"; then
        echo "=== $name: built in $((SECONDS - start)) s; ctest"
        start=$SECONDS
        if ! (cd "$dir" && ctest --output-on-failure -j "$JOBS" "${ctest_args[@]}"); then
            status=1
        fi
        echo "=== $name: tests took $((SECONDS - start)) s"
    else
        echo "=== $name: BUILD FAILED"
        status=1
    fi
}

have_nvcc=0
command -v nvcc >/dev/null && have_nvcc=1
run_config default "$BUILD_DIR" "$have_nvcc" -- -DCMAKE_BUILD_TYPE=Release "${python_args[@]}"
if [ "$SANITIZE" = 1 ]; then
    # Sanitizer reports are errors; the library must not leak either.
    export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    run_config "asan+ubsan" "$SANITIZE_BUILD_DIR" 0 -E python -- \
        -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFA_SANITIZE=ON -DFA_ENABLE_CUDA=OFF
fi
exit $status
