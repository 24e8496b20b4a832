#!/bin/bash
# call 5: the in-kernel transpose at hdim 128 only, with the producer warpgroup at 40 registers and
# the consumers at 232 (hdim 256 keeps the pass: its consumers need 240), four units in flight, its
# own tile walk (no word from the producer). Checks (2 and 3 stages), racecheck, then the FP8 speed
# at hdim 128 in alternating processes: the pass (FA_SM90_FP8_VT=pass), in kernel with 2 stages, 3.
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s28/p/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s28/p
G=build-s28/p/tests/test_grid
timeout 90 python3 bench/fp8_bench.py check > $OUT/guard.log 2>&1
rc=$?; tail -1 $OUT/guard.log; echo "guard rc=$rc"; [ $rc -eq 0 ] || exit 1
for st in 2 3; do
  FA_SM90_FP8_STAGES=$st timeout 200 $G --device cuda --backend sm90 --filter fp8 > $OUT/grid-fp8-s$st.log 2>&1
  echo "grid fp8 stages $st rc=$?: $(tail -1 $OUT/grid-fp8-s$st.log | cut -c1-120)"; grep -A3 FAIL $OUT/grid-fp8-s$st.log | head -8
done
timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 $G --device cuda --backend sm90 --quick --filter fp8 > $OUT/racecheck.log 2>&1
echo "racecheck rc=$?: $(grep 'RACECHECK SUMMARY' $OUT/racecheck.log)"
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $G --device cuda --backend sm90 --quick --filter fp8 > $OUT/memcheck.log 2>&1
echo "memcheck rc=$?: $(grep 'ERROR SUMMARY' $OUT/memcheck.log)"
run() { # label, env...
  local label=$1; shift
  env "$@" python3 bench/fp8_bench.py bench --dims 128 --out $OUT/bench-$label.json > $OUT/bench-$label.log 2>&1
  echo "== $label"; grep "^d" $OUT/bench-$label.log | sed 's/  sdpa-cudnn/ cudnn/'
}
run pass-a FA_SM90_FP8_VT=pass
run kernel-a FA_SM90_FP8_STAGES=2
run kernel3-a FA_SM90_FP8_STAGES=3
run pass-b FA_SM90_FP8_VT=pass
run kernel-b FA_SM90_FP8_STAGES=2
