#!/bin/bash
# call 7: a 64-row decoding tile for the Hopper split (16-bit, one consumer warpgroup, where the
# packed rows are at most 64; ".split.m64"; FA_SM90_SPLIT_BLOCK_M=128 keeps the two-warpgroup tile).
# The decoding families on auto (each case's kernel), with the 128-row tile, with 5 parts, without
# packing; sanitizers on sm90's decode16; then the decoding shapes on three fresh allocations each,
# the 64-row tile (auto) against the 128-row one in the same process.
P=build-s30/p
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P PYTHONUNBUFFERED=1
G=$P/tests/test_grid
run() { local name=$1 limit=$2; shift 2; timeout $limit "$@" > $OUT/$name.log 2>&1; local rc=$?
        echo "$name rc=$rc: $(tail -1 $OUT/$name.log | cut -c1-140)"; grep -A3 "^FAIL" $OUT/$name.log | head -8; }
run grid-auto-decode 100 $G --device cuda --backend auto --filter decode --verbose
grep -E "^(ok|FAIL).*decode16" $OUT/grid-auto-decode.log | cut -c1-120
FA_SM90_SPLIT_BLOCK_M=128 run grid-auto-m128-decode 100 $G --device cuda --backend auto --filter decode
FA_SM90_FWD_SPLIT=5 run grid-auto-split5-decode 100 $G --device cuda --backend auto --filter decode
FA_SM90_PACK_GQA=0 run grid-auto-nopack-decode 100 $G --device cuda --backend auto --filter decode
for tool in memcheck racecheck; do
  run sanitizer-$tool 120 compute-sanitizer --tool $tool --error-exitcode 9 $G --device cuda --backend sm90 --filter decode16
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer-$tool.log | tail -1
done
SHAPES="8:32:8:64:1:8192 4:16:2:256:1:16384 1:32:8:128:1:131072 2:32:8:128:1:32768 8:32:8:128:4:8192"
timeout 200 python3 bench/decode_bench.py --reps 5 --allocs 3 --env FA_SM90_SPLIT_BLOCK_M=128 --out $OUT/m64.json $SHAPES > $OUT/m64.txt 2>&1; cat $OUT/m64.txt
timeout 60 python3 bench/decode_bench.py --reps 5 --causal --env FA_SM90_SPLIT_BLOCK_M=128 --out $OUT/m64-causal.json 1:32:8:128:4:131072 8:32:8:128:4:8192 > $OUT/m64-causal.txt 2>&1; cat $OUT/m64-causal.txt
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
