#!/bin/bash
# call 2: after call 1 hung (the consumers' setmaxnreg.inc to 240 could not be met once the
# producer warpgroup kept 32 registers: the pool is 168 x 384 = 64512), the producer back at 24 and
# the transposing warps fed by the producer (a word per raw buffer). Where ptxas spills at hdim 256
# (SASS of build-s28/p/fwd_sm90.cubin), a hang guard, then the FP8 mode of the device script.
cuobjdump -sass build-s28/p/fwd_sm90.cubin > $OUT/sass.txt 2>&1
python3 - "$OUT/sass.txt" > $OUT/spills.txt <<'PY'
import sys, re
lines = open(sys.argv[1]).read().splitlines()
fn = None
for i, l in enumerate(lines):
    m = re.search(r"Function : (\S+)", l)
    if m: fn = m.group(1)
    if fn and "e4m3Li256" in fn and re.search(r"\b(STL|LDL)", l):
        print(i, l.strip())
        for c in lines[max(0, i - 6): i + 3]: print("    ", c.strip()[:110])
PY
head -c 6000 $OUT/spills.txt
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s28/p/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s28/p
timeout 90 python3 bench/fp8_bench.py check > $OUT/guard.log 2>&1
rc=$?; tail -3 $OUT/guard.log; echo "guard rc=$rc"
[ $rc -eq 0 ] || exit 1
CHECK=0 PREBUILT=build-s28/p OUT=$OUT bash scripts/device_run.sh fp8 > $OUT/run.log 2>&1
tail -40 $OUT/run.log
