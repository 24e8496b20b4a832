#!/bin/bash
# call 2: KV-cache families (sm90 paged now), sanitizers, Python kvcache, bench, full sm90 grid
P=build-s26/p
export LD_LIBRARY_PATH=$PWD/$P PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so PYTHONUNBUFFERED=1
G=$P/tests/test_grid
for be in sm80 auto sm90; do for f in seqused paged decode; do
  timeout 120 $G --device cuda --backend $be --filter $f > $OUT/g-$be-$f.log 2>&1; echo "grid $be $f rc=$? $(tail -1 $OUT/g-$be-$f.log | cut -c12-110)"; grep -A3 FAIL $OUT/g-$be-$f.log | head -8
done; done
for f in seqused paged decode; do
  FA_SM80_FWD_SPLIT=3 timeout 120 $G --device cuda --backend sm80 --filter $f > $OUT/gs-$f.log 2>&1; echo "split3 $f rc=$? $(tail -1 $OUT/gs-$f.log | cut -c12-60) $(tail -1 $OUT/gs-$f.log | grep -o 'last-wave.*')"; grep -A3 FAIL $OUT/gs-$f.log | head -5
done
for be in sm90 auto; do for f in paged decode; do
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 $G --device cuda --backend $be --quick --filter $f > $OUT/mc-$be-$f.log 2>&1; echo "memcheck $be $f rc=$? $(grep -E 'ERROR SUMMARY' $OUT/mc-$be-$f.log | tail -1) $(tail -1 $OUT/mc-$be-$f.log | cut -c12-60)"
done; done
timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 $G --device cuda --backend sm90 --quick --filter paged > $OUT/rc-sm90.log 2>&1; echo "racecheck sm90 paged rc=$? $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' $OUT/rc-sm90.log | tail -1)"
PYTHONPATH=$PWD/python:$PWD/python/tests timeout 200 python3 -m pytest -p no:cacheprovider -q python/tests/test_kvcache.py > $OUT/pytest.log 2>&1; echo "pytest kvcache rc=$? $(tail -1 $OUT/pytest.log)"
timeout 200 $G --device cuda --backend sm90 > $OUT/grid-sm90.log 2>&1; echo "grid sm90 full rc=$? $(tail -1 $OUT/grid-sm90.log | cut -c12-200)"; grep -A3 FAIL $OUT/grid-sm90.log | head -8
timeout 200 python3 bench/kvcache_bench.py --reps 7 --out $OUT/kvcache.json 8:32:8:128:4096 64:32:8:128:1024 16:32:32:128:4096 4:32:32:128:16384 2>&1 | tee $OUT/kvcache.txt
