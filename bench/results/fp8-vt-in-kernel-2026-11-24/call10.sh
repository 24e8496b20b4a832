#!/bin/bash
# call 10 (diagnostic, a build not committed: FA_SM90_FP8_DIAG instances added for this call only;
# build-s28/pd): where the in-kernel transpose's ~5% at long sequences goes. hdim 128, 512 and 16k:
# pass (the dispatcher at 16k), in kernel (forced), the pass with the in-kernel form's registers
# (producer 40, consumers 232: "regs"), and the in-kernel form with the transposing warps'
# barrier protocol but no transpose ("handshake": wrong results, timing only).
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s28/pd/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s28/pd
run() { local label=$1; shift
  env "$@" python3 bench/fp8_bench.py bench --dims 128 --seqlens 512 16384 --out $OUT/$label.json > $OUT/$label.log 2>&1
  echo "== $label"; grep "^d" $OUT/$label.log | sed 's/  sdpa-cudnn/ cudnn/'; }
run pass FA_SM90_FP8_VT=pass
run kernel FA_SM90_FP8_VT=kernel
run regs FA_SM90_FP8_DIAG=regs
run handshake FA_SM90_FP8_DIAG=handshake
run pass2 FA_SM90_FP8_VT=pass
run kernel2 FA_SM90_FP8_VT=kernel
