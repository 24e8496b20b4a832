#!/usr/bin/env bash
# FlashAttention-3's Hopper forward as a same-process peer for
# bench/gpu_bench.py (`--peers sdpa-cudnn fa3 --fa3-lib libfa3peer.so
# --forward-only`), built from an FA3 checkout and its CUTLASS pin (neither is
# part of this project; the sixteenth session used Dao-AILab/flash-attention
# 0251105a and CUTLASS 7127592, the FA3 anchor's versions):
#   FA3=<flash-attention>/hopper CUTLASS=<cutlass> bench/fa3_peer/build.sh [OUT_DIR]
# ~2.5 min on 2 cores (bf16, hdim 64/128/256, causal or not: six kernels).
# Copy OUT_DIR/libfa3peer.so to the device with the library.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$PWD}
: "${FA3:?FA3=<flash-attention checkout>/hopper}" "${CUTLASS:?CUTLASS=<cutlass checkout>}"
flags="-O3 -std=c++17 --use_fast_math --expt-relaxed-constexpr --expt-extended-lambda
 -DCUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED -DCUTLASS_ENABLE_GDC_FOR_SM90 -DCUTLASS_DEBUG_TRACE_LEVEL=0 -DNDEBUG
 -gencode=arch=compute_90a,code=sm_90a -Xcompiler -fPIC -I$FA3 -I$CUTLASS/include -I$CUTLASS/tools/util/include"
nvcc $flags -c "$here/fa3_peer.cu" -o "$out/fa3_peer.o" &
nvcc $flags -c "$FA3/flash_prepare_scheduler.cu" -o "$out/fa3_prepare.o" # referenced by the launch template
wait
nvcc -shared -o "$out/libfa3peer.so" "$out/fa3_peer.o" "$out/fa3_prepare.o" -lcudart
ls -la "$out/libfa3peer.so"
