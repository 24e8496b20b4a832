#!/bin/bash
# call 8: the final library (with the 64-row decoding tile, which the grid's many small problems now
# run on Hopper): the whole grid on auto and sm90, the Python suite.
P=build-s30/p
export PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so LD_LIBRARY_PATH=$PWD/$P PYTHONUNBUFFERED=1
G=$P/tests/test_grid
run() { local name=$1 limit=$2; shift 2; timeout $limit "$@" > $OUT/$name.log 2>&1; local rc=$?
        echo "$name rc=$rc: $(tail -1 $OUT/$name.log | cut -c1-160)"; grep -A3 "^FAIL" $OUT/$name.log | head -8; }
run grid-auto 200 $G --device cuda --backend auto --verbose
echo "cases that ran a 64-row split: $(grep -c 'split.m64' $OUT/grid-auto.log)"
run grid-sm90 200 $G --device cuda --backend sm90
PYTHONPATH=$PWD/python:$PWD/python/tests PYTHONDONTWRITEBYTECODE=1 run pytest 150 python3 -m pytest -p no:cacheprovider -q python/tests
mkdir -p $OUT/logs && mv $OUT/*.log $OUT/logs/ 2>/dev/null
tar czf $OUT/logs.tgz -C $OUT logs && rm -rf $OUT/logs
