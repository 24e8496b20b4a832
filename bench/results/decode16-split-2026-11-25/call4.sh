#!/bin/bash
# call 4: after a helper's review: the size query covers sm80's forward split (a q that TMA cannot
# read runs sm80's split, which needs more workspace than the Hopper split the query planned), the
# Hopper split's model counts a sliding window's key blocks, decode16 with ratios 3 and 6 (sm80's
# packed tiles starting mid-query), packed paged rows. The decoding families on auto (also
# without packing and with 5 parts forced) and sm80 (packed, unpacked, 3 parts), sanitizers on
# sm80's and sm90's decode16, the Python suite, test_api, the whole grid on auto; the decoding
# shapes of call 3b.
P=build-s30/p
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P PYTHONUNBUFFERED=1
G=$P/tests/test_grid
run() { local name=$1 limit=$2; shift 2; timeout $limit "$@" > $OUT/$name.log 2>&1; local rc=$?
        echo "$name rc=$rc: $(tail -1 $OUT/$name.log | cut -c1-140)"; grep -A3 "^FAIL" $OUT/$name.log | head -8; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
run grid-auto-decode 120 $G --device cuda --backend auto --filter decode --verbose
grep -E "^(ok|FAIL).*decode16" $OUT/grid-auto-decode.log | cut -c1-150
FA_SM90_PACK_GQA=0 run grid-auto-nopack-decode 120 $G --device cuda --backend auto --filter decode
FA_SM90_FWD_SPLIT=5 run grid-auto-split5-decode 120 $G --device cuda --backend auto --filter decode
run grid-sm80-decode 120 $G --device cuda --backend sm80 --filter decode --verbose
grep -E "^(ok|FAIL).*decode16" $OUT/grid-sm80-decode.log | cut -c1-150
FA_SM80_PACK_GQA=0 run grid-sm80-nopack-decode 120 $G --device cuda --backend sm80 --filter decode
FA_SM80_FWD_SPLIT=3 run grid-sm80-split3-decode 120 $G --device cuda --backend sm80 --filter decode
for b in sm80 sm90; do for tool in memcheck racecheck; do
  run sanitizer-$b-$tool 150 compute-sanitizer --tool $tool --error-exitcode 9 $G --device cuda --backend $b --filter decode16
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer-$b-$tool.log | tail -1
done; done
PYTHONPATH=$PWD/python:$PWD/python/tests PYTHONDONTWRITEBYTECODE=1 run pytest 200 python3 -m pytest -p no:cacheprovider -q python/tests
grep -E "FAILED" $OUT/pytest.log | head
run test-api 120 $P/tests/test_api
SHAPES="8:32:8:64:1:8192 1:32:8:128:1:131072 4:16:2:256:1:16384 2:32:8:128:1:32768"
timeout 100 python3 bench/decode_bench.py --reps 5 --out $OUT/rows1.json $SHAPES > $OUT/rows1.txt 2>&1; cat $OUT/rows1.txt
R4="1:32:8:128:4:131072 8:32:8:128:4:8192"
timeout 60 python3 bench/decode_bench.py --reps 5 --causal --out $OUT/rows4-causal.json $R4 > $OUT/rows4-causal.txt 2>&1; cat $OUT/rows4-causal.txt
run grid-auto 170 $G --device cuda --backend auto
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
