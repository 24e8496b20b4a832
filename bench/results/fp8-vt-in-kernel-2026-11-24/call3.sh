#!/bin/bash
# call 3: the transposing warps with two units (8 loads) in flight per step (call 2: one unit,
# FP8 held to ~500 TFLOP/s). Spill sites (SASS), hang guard, FP8 grid on sm90, racecheck's first
# hazards, then the FP8 speed grid.
cuobjdump -sass build-s28/p/fwd_sm90.cubin > $OUT/sass.txt 2>&1
python3 - "$OUT/sass.txt" > $OUT/spills.txt <<'PY'
import sys, re
lines = open(sys.argv[1]).read().splitlines()
fn = None
for i, l in enumerate(lines):
    m = re.search(r"Function : (\S+)", l)
    if m: fn = m.group(1)
    if fn and "e4m3Li" in fn and re.search(r"\b(STL|LDL)\b", l):
        print(fn[40:75], i, re.sub(r"\s+", " ", l.strip())[:70])
PY
head -30 $OUT/spills.txt; rm $OUT/sass.txt
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s28/p/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s28/p
timeout 90 python3 bench/fp8_bench.py check > $OUT/guard.log 2>&1
rc=$?; tail -2 $OUT/guard.log; echo "guard rc=$rc"
[ $rc -eq 0 ] || exit 1
timeout 200 build-s28/p/tests/test_grid --device cuda --backend sm90 --filter fp8 > $OUT/grid-sm90-fp8.log 2>&1
echo "grid rc=$?: $(tail -1 $OUT/grid-sm90-fp8.log | cut -c1-120)"
timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 build-s28/p/tests/test_grid --device cuda \
    --backend sm90 --quick --filter fp8 > $OUT/racecheck.log 2>&1
echo "racecheck rc=$?"; grep -m1 -B2 -A12 "Error\|Warning" $OUT/racecheck.log | cut -c1-160 | head -30
tail -2 $OUT/racecheck.log
python3 bench/fp8_bench.py bench --out $OUT/fp8-bench.json 2>&1 | tee $OUT/fp8-bench.log | grep "^d"
