#!/bin/bash
# call 5: the final test program (decoding cases forward only; the split assertion not in --quick):
# the whole grid on auto and sm90, the decoding families on sm80, and the device script's quick
# sanitizer runs (memcheck, racecheck on auto --quick).
P=build-s30/p
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P PYTHONUNBUFFERED=1
G=$P/tests/test_grid
run() { local name=$1 limit=$2; shift 2; timeout $limit "$@" > $OUT/$name.log 2>&1; local rc=$?
        echo "$name rc=$rc: $(tail -1 $OUT/$name.log | cut -c1-140)"; grep -A3 "^FAIL" $OUT/$name.log | head -8; }
run grid-auto 170 $G --device cuda --backend auto
run grid-sm90 200 $G --device cuda --backend sm90
run grid-sm80-decode 100 $G --device cuda --backend sm80 --filter decode
for tool in memcheck racecheck; do
  run sanitizer-$tool 150 compute-sanitizer --tool $tool --error-exitcode 9 $G --device cuda --backend auto --quick
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer-$tool.log | tail -1
done
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
