#!/usr/bin/env bash
# A/B of library builds in one device call: every variant benchmarked by
# bench/gpu_bench.py in the same process as the peers, the variants
# alternating over two rounds (the second in reverse order), after an
# optional test grid per variant. Compare with bench/ab_compare.py.
#
# Here (development machine): build each variant's library, then
#   scripts/device_ab.sh pack PACK name=build-dir[,VAR=value...] ...   e.g. base=build-a new=build-b
# which copies each libflashattn.so* into PACK/name (and the VAR=value
# settings, if any, into PACK/name/env: the variant's grid and bench run
# with them in the environment, so one build can stand for several), test_grid (and the
# CUDA runtime it links) from the first build that has one into
# PACK/tests, and writes PACK/bins.tar.xz. PACK goes inside the checkout, in an ignored folder
# (build-ab, say): carry PACK/bins.tar.xz, and run from the checkout there.
# There (device):
#   scripts/device_ab.sh run PACK
# Env: VARIANTS (default: every packed name, in pack order), BACKEND
# (gpu_bench backend, default cuda_sm80), DIMS, SEQS (default 64 128 256 /
# 1024 4096 16384), GRID (variants to test_grid first), GRID_BACKENDS
# (default sm80), LIMS (FA_SM80_SMEM_LIMIT values for the grid, default 0 =
# none), TAG (prefix of the output names), BENCH_ARGS (more gpu_bench
# arguments, e.g. --forward-only), BENCH_TIMEOUT (seconds per bench run, default 300). Output: $OUT/TAGab.tgz with
# ab-<variant>-<round>.json and the logs (one file: the device tool brings
# back only a few).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-}
PACK=${2:-}
[ -n "$MODE" ] && [ -n "$PACK" ] || { echo "usage: $0 pack PACK name=build-dir ... | run PACK"; exit 2; }

if [ "$MODE" = pack ]; then
    shift 2
    [ $# -gt 0 ] || { echo "pack: no variants"; exit 2; }
    rm -rf "$PACK" && mkdir -p "$PACK/tests"
    names=()
    for spec in "$@"; do
        name=${spec%%=*} dir=${spec#*=}
        settings=""
        if [[ $dir == *,* ]]; then settings=${dir#*,} dir=${dir%%,*}; fi
        [ -f "$dir/libflashattn.so" ] || { echo "pack: no $dir/libflashattn.so"; exit 1; }
        mkdir -p "$PACK/$name" && cp -P "$dir"/libflashattn.so* "$PACK/$name/"
        [ -n "$settings" ] && echo "$settings" | tr ',' '\n' > "$PACK/$name/env"
        if [ ! -f "$PACK/tests/test_grid" ] && [ -f "$dir/tests/test_grid" ]; then
            cp "$dir/tests/test_grid" "$PACK/tests/"
            # the CUDA runtime test_grid links, in case the device's toolkit differs
            cudart=$(ldd "$dir/tests/test_grid" | awk '/libcudart/ {print $3}')
            [ -n "$cudart" ] && cp -L "$cudart" "$PACK/tests/"
        fi
        names+=("$name")
    done
    [ -f "$PACK/tests/test_grid" ] || echo "pack: no tests/test_grid in any build (FA_BUILD_TESTS=ON): GRID will not run"
    echo "${names[*]}" > "$PACK/variants"
    (cd "$PACK" && tar cJf bins.tar.xz variants tests "${names[@]}")
    ls -la "$PACK/bins.tar.xz"
    exit 0
fi

[ "$MODE" = run ] || { echo "unknown mode $MODE"; exit 2; }
OUT=${OUT:-$PWD/ab-out}
mkdir -p "$OUT"
B=$(cd "$PACK" && pwd)
[ -f "$B/variants" ] || (cd "$B" && tar xJf bins.tar.xz) || { echo "run: no $PACK/bins.tar.xz"; exit 1; }
V=${VARIANTS:-$(cat "$B/variants")}
TAG=${TAG:-}
work=$(mktemp -d)
# the VAR=value settings a variant was packed with (none: nothing)
settings_of() { cat "$B/$1/env" 2>/dev/null; }
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader || true
for v in ${GRID:-}; do for be in ${GRID_BACKENDS:-sm80}; do for lim in ${LIMS:-0}; do
    log=$work/grid-$v-$be-$lim.log
    env $(settings_of "$v") FA_SM80_SMEM_LIMIT=$lim LD_LIBRARY_PATH=$B/$v:$B/tests timeout 200 "$B/tests/test_grid" --device cuda --backend "$be" > "$log" 2>&1
    echo "grid $v $be smem $lim rc=$? $(tail -1 "$log")"
    grep -E "FAIL" "$log" | head -3
done; done; done
for r in 1 2; do
    order=$V
    [ $r = 2 ] && order=$(echo $V | tr ' ' '\n' | tac | tr '\n' ' ')
    for v in $order; do
        t0=$(date +%s)
        env $(settings_of "$v") PYTHONPATH=python FLASHATTN_LIB=$B/$v/libflashattn.so timeout ${BENCH_TIMEOUT:-300} python3 bench/gpu_bench.py bench \
            --backend "${BACKEND:-cuda_sm80}" --dims ${DIMS:-64 128 256} --seqlens ${SEQS:-1024 4096 16384} \
            ${BENCH_ARGS:-} --out "$work/ab-$v-$r.json" > "$work/bench-$v-$r.log" 2>&1
        echo "bench $v round $r rc=$? $(( $(date +%s) - t0 )) s"
        # packed after every run, so that a call cut short keeps what it measured
        (cd "$work" && tar czf "$OUT/${TAG}ab.tgz" ./*.log $(ls ./*.json 2>/dev/null))
    done
done
rm -rf "$work"
echo "results: $OUT/${TAG}ab.tgz (bench/ab_compare.py DIR after unpacking)"
