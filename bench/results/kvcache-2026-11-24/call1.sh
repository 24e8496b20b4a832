#!/bin/bash
# call 1: the KV-cache families on every backend, forced split, memcheck, Python kvcache tests, kvcache bench
P=build-s26/p
export LD_LIBRARY_PATH=$PWD/$P PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
G=$P/tests/test_grid
for be in sm80 auto sm90; do for f in seqused paged decode; do
  timeout 120 $G --device cuda --backend $be --filter $f > $OUT/g-$be-$f.log 2>&1; echo "grid $be $f rc=$? $(tail -1 $OUT/g-$be-$f.log | cut -c1-230)"; grep FAIL $OUT/g-$be-$f.log | head -5
done; done
for f in seqused paged decode; do
  FA_SM80_FWD_SPLIT=3 timeout 120 $G --device cuda --backend sm80 --filter $f > $OUT/gs-$f.log 2>&1; echo "split3 $f rc=$? $(tail -1 $OUT/gs-$f.log | cut -c1-60) $(tail -1 $OUT/gs-$f.log | grep -o 'last-wave.*')"; grep FAIL $OUT/gs-$f.log | head -5
done
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $G --device cuda --backend auto --quick --filter decode > $OUT/memcheck.log 2>&1; echo "memcheck decode rc=$? $(grep -E 'ERROR SUMMARY' $OUT/memcheck.log | tail -1)"
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 $G --device cuda --backend sm80 --quick --filter paged > $OUT/memcheck2.log 2>&1; echo "memcheck paged rc=$? $(grep -E 'ERROR SUMMARY' $OUT/memcheck2.log | tail -1)"
PYTHONPATH=$PWD/python:$PWD/python/tests timeout 200 python3 -m pytest -p no:cacheprovider -q python/tests/test_kvcache.py > $OUT/pytest.log 2>&1; echo "pytest kvcache rc=$? $(tail -1 $OUT/pytest.log)"
timeout 240 python3 bench/kvcache_bench.py --out $OUT/kvcache.json 8:32:8:128:4096 32:32:8:128:2048 64:32:8:128:1024 16:32:32:128:4096 4:32:32:128:16384 2>&1 | tee $OUT/kvcache.txt
