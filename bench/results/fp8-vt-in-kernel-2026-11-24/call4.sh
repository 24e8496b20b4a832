#!/bin/bash
# call 4: the kept tree: the Vᵀ pass (not the in-kernel transpose of calls 1-3, which lost at
# long sequences), now reading a paged cache through the block table: FP8 checks and test
# families (fp8long with two paged caches) on sm90 / auto, sanitizers, the Python FP8 tests.
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/build-s28/p/libflashattn.so LD_LIBRARY_PATH=$PWD/build-s28/p
G=build-s28/p/tests/test_grid
timeout 120 python3 bench/fp8_bench.py check > $OUT/fp8-check.log 2>&1; echo "fp8 check rc=$?: $(tail -1 $OUT/fp8-check.log)"
for b in sm90 auto; do
  timeout 200 $G --device cuda --backend $b --filter fp8 > $OUT/grid-$b-fp8.log 2>&1
  echo "grid $b fp8 rc=$?: $(tail -1 $OUT/grid-$b-fp8.log | cut -c1-150)"; grep -A3 FAIL $OUT/grid-$b-fp8.log | head
done
grep "fp8long" $OUT/grid-sm90-fp8.log | cut -c1-150
for tool in memcheck racecheck; do
  timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 $G --device cuda --backend sm90 --quick --filter fp8 \
      > $OUT/sanitizer-$tool.log 2>&1
  echo "$tool rc=$?: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' $OUT/sanitizer-$tool.log | tail -1)"
done
PYTHONPATH=$PWD/python:$PWD/python/tests PYTHONDONTWRITEBYTECODE=1 timeout 200 python3 -m pytest -p no:cacheprovider -q \
    python/tests/test_fp8.py python/tests/test_fa3_interface.py > $OUT/pytest-fp8.log 2>&1
echo "pytest fp8 rc=$?: $(tail -1 $OUT/pytest-fp8.log)"
timeout 120 build-s28/p/tests/test_api > $OUT/test-api.log 2>&1; echo "test_api rc=$?: $(tail -1 $OUT/test-api.log)"
