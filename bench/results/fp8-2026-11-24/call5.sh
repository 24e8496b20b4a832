#!/bin/bash
# call 5: after the review's fixes (Vᵀ per packed sequence, the no-key path, checks): the FP8 mode of
# the device script, then the whole auto grid and the Python suite, on binaries built here (build-s27/p)
PREBUILT=build-s27/p OUT=$OUT bash scripts/device_run.sh fp8 > $OUT/run.log 2>&1
sed -n '/==== summary/,$p' $OUT/run.log
P=build-s27/p
export LD_LIBRARY_PATH=$PWD/$P FLASHATTN_LIB=$PWD/$P/libflashattn.so
timeout 200 $P/tests/test_grid --device cuda --backend auto > $OUT/grid-auto.log 2>&1; echo "grid auto rc=$? $(tail -1 $OUT/grid-auto.log | cut -c1-150)"
PYTHONPATH=$PWD/python:$PWD/python/tests timeout 200 python3 -m pytest -p no:cacheprovider -q python/tests > $OUT/pytest.log 2>&1; echo "pytest rc=$? $(tail -1 $OUT/pytest.log)"
grep -E "^d(128|256) causal=. s16384" $OUT/fp8-bench.log
