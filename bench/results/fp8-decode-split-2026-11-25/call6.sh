#!/bin/bash
# call 6: the heaviest-first sections never smaller than one round (build-s29/q, host code only):
# decoding shapes with four causal rows (bf16 and FP8 without the split run that scheduler), then
# the 16-bit causal / window grid cases on sm90.
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s29/q/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s29/q
timeout 150 python3 bench/fp8_bench.py decode --rows 4 --causal --reps 4 --out $OUT/decode-rows4causal.json > $OUT/decode-rows4causal.log 2>&1
cat $OUT/decode-rows4causal.log
timeout 150 build-s29/p/tests/test_grid --device cuda --backend sm90 --filter causal > $OUT/grid-sm90-causal.log 2>&1
echo "test_grid sm90 causal rc=$?: $(tail -1 $OUT/grid-sm90-causal.log | cut -c1-120)"; grep -A3 FAIL $OUT/grid-sm90-causal.log | head -8
timeout 100 build-s29/p/tests/test_grid --device cuda --backend sm90 --filter win > $OUT/grid-sm90-window.log 2>&1
echo "test_grid sm90 window rc=$?: $(tail -1 $OUT/grid-sm90-window.log | cut -c1-120)"; grep -A3 FAIL $OUT/grid-sm90-window.log | head -8
