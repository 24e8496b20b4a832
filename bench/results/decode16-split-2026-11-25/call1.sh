#!/bin/bash
# call 1: the Hopper key split for 16-bit dtypes (hdim 64 / 128 / 256 instances, GQA packed) and
# the sm80 split under windows. The decoding families on auto (each case's kernel), sm80, with the
# split forced to 5 / 3 parts and without packing; sanitizers on decode16 (sm90); test_api; the
# decoding benchmark with one row and four causal rows; then the whole grid on auto and sm90.
P=build-s30/p
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P PYTHONUNBUFFERED=1
G=$P/tests/test_grid
run() { local name=$1 limit=$2; shift 2; timeout $limit "$@" > $OUT/$name.log 2>&1; local rc=$?
        echo "$name rc=$rc: $(tail -1 $OUT/$name.log | cut -c1-140)"; grep -A3 "^FAIL" $OUT/$name.log | head -8; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
run grid-auto-decode 120 $G --device cuda --backend auto --filter decode --verbose
grep -E "^(ok|FAIL)" $OUT/grid-auto-decode.log | grep -E "decode16|  decode " | cut -c1-150
run grid-sm80-decode 120 $G --device cuda --backend sm80 --filter decode --verbose
grep -E "^(ok|FAIL).*win" $OUT/grid-sm80-decode.log | cut -c1-150
FA_SM80_FWD_SPLIT=3 run grid-sm80-split3-decode 120 $G --device cuda --backend sm80 --filter decode
FA_SM90_FWD_SPLIT=5 run grid-auto-split5-decode 120 $G --device cuda --backend auto --filter decode
FA_SM90_PACK_GQA=0 run grid-auto-nopack-decode 120 $G --device cuda --backend auto --filter decode
for tool in memcheck racecheck; do
  run sanitizer-$tool 150 compute-sanitizer --tool $tool --error-exitcode 9 $G --device cuda --backend sm90 --filter decode16
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer-$tool.log | tail -1
done
run test-api 120 $P/tests/test_api
SHAPES="1:32:8:128:1:131072 2:32:8:128:1:32768 8:32:8:128:1:8192 8:32:8:128:1:32768 4:16:16:128:1:16384 1:32:32:128:1:16384 8:32:8:64:1:8192 4:16:2:256:1:16384"
timeout 150 python3 bench/decode_bench.py --out $OUT/decode-rows1.json $SHAPES > $OUT/decode-rows1.txt 2>&1
CSHAPES="1:32:8:128:4:131072 2:32:8:128:4:32768 8:32:8:128:4:8192 4:16:16:128:4:16384"
timeout 100 python3 bench/decode_bench.py --causal --out $OUT/decode-rows4-causal.json $CSHAPES > $OUT/decode-rows4-causal.txt 2>&1
cat $OUT/decode-rows1.txt $OUT/decode-rows4-causal.txt
run grid-auto 170 $G --device cuda --backend auto
run grid-sm90 120 $G --device cuda --backend sm90
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
