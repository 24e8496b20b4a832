#!/bin/bash
# call 3: sm80's split packs GQA too (parts of one row tile per warp; FA_SM80_PACK_GQA=0 turns it
# off); the Python plan cache keyed by the split variables. The decoding families on sm80 (packed,
# unpacked, 3 parts forced) and auto, sanitizers on sm80's decode16, the Python execution tests;
# the parts sweep of call 2; four query rows on sm80, causal and not.
P=build-s30/p
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P PYTHONUNBUFFERED=1
G=$P/tests/test_grid
run() { local name=$1 limit=$2; shift 2; timeout $limit "$@" > $OUT/$name.log 2>&1; local rc=$?
        echo "$name rc=$rc: $(tail -1 $OUT/$name.log | cut -c1-140)"; grep -A3 "^FAIL" $OUT/$name.log | head -8; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
run grid-sm80-decode 120 $G --device cuda --backend sm80 --filter decode --verbose
grep -E "^(ok|FAIL)" $OUT/grid-sm80-decode.log | cut -c1-150
FA_SM80_PACK_GQA=0 run grid-sm80-nopack-decode 120 $G --device cuda --backend sm80 --filter decode
FA_SM80_FWD_SPLIT=3 run grid-sm80-split3-decode 120 $G --device cuda --backend sm80 --filter decode
run grid-auto-decode 120 $G --device cuda --backend auto --filter decode
for tool in memcheck racecheck; do
  run sanitizer-$tool 150 compute-sanitizer --tool $tool --error-exitcode 9 $G --device cuda --backend sm80 --filter decode16
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer-$tool.log | tail -1
done
PYTHONPATH=$PWD/python:$PWD/python/tests PYTHONDONTWRITEBYTECODE=1 run pytest-exec 120 python3 -m pytest -p no:cacheprovider -q python/tests/test_execution.py python/tests/test_kvcache.py
SHAPES="8:32:8:64:1:8192 8:32:8:128:1:8192 1:32:8:128:1:131072 4:16:2:256:1:16384 2:32:8:128:1:32768"
timeout 200 python3 bench/decode_bench.py --reps 5 --parts 2,4,8,16,32 --out $OUT/parts.json $SHAPES > $OUT/parts.txt 2>&1; tail -12 $OUT/parts.txt
R4="1:32:8:128:4:131072 2:32:8:128:4:32768 8:32:8:128:4:8192 4:16:16:128:4:16384"
timeout 100 python3 bench/decode_bench.py --reps 5 --out $OUT/rows4.json $R4 > $OUT/rows4.txt 2>&1; cat $OUT/rows4.txt
timeout 100 python3 bench/decode_bench.py --reps 5 --causal --out $OUT/rows4-causal.json $R4 > $OUT/rows4-causal.txt 2>&1; cat $OUT/rows4-causal.txt
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
