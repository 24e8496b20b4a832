#!/bin/bash
# call 10: the final tree: every grid, both smem limits, Python suite, check, sanitizers
P=build-s26/p
export LD_LIBRARY_PATH=$PWD/$P PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so PYTHONUNBUFFERED=1
G=$P/tests/test_grid
mkdir -p logs
python3 bench/gpu_bench.py check > logs/check.log 2>&1; echo "check rc=$? $(tail -1 logs/check.log)"
PYTHONPATH=$PWD/python:$PWD/python/tests PYTHONDONTWRITEBYTECODE=1 timeout 200 python3 -m pytest -p no:cacheprovider -q python/tests > logs/pytest.log 2>&1; echo "python rc=$? $(tail -1 logs/pytest.log)"
for be in sm80 sm90 auto; do timeout 150 $G --device cuda --backend $be > logs/grid-$be.log 2>&1; echo "grid $be rc=$? $(tail -1 logs/grid-$be.log | cut -c12-400)"; grep -A3 FAIL logs/grid-$be.log | head -6; done
for lim in 166912 101376; do FA_SM80_SMEM_LIMIT=$lim timeout 150 $G --device cuda --backend sm80 > logs/grid-sm80-$lim.log 2>&1; echo "grid sm80 smem $lim rc=$? $(tail -1 logs/grid-sm80-$lim.log | cut -c12-100)"; done
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 $G --device cuda --backend auto --quick > logs/memcheck.log 2>&1; echo "memcheck auto quick rc=$? $(grep 'ERROR SUMMARY' logs/memcheck.log | tail -1)"
timeout 120 compute-sanitizer --tool racecheck --error-exitcode 9 $G --device cuda --backend auto --quick > logs/racecheck.log 2>&1; echo "racecheck auto quick rc=$? $(grep 'RACECHECK SUMMARY' logs/racecheck.log | tail -1)"
tar czf $OUT/logs.tgz logs
