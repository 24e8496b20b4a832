#!/bin/bash
# call 3: the full grids on sm80 and auto (every family), tarred logs
P=build-s26/p
export LD_LIBRARY_PATH=$PWD/$P PYTHONPATH=$PWD/python FLASHATTN_LIB=$PWD/$P/libflashattn.so PYTHONUNBUFFERED=1
G=$P/tests/test_grid
mkdir -p logs
for be in sm80 auto; do
  timeout 285 $G --device cuda --backend $be > logs/grid-$be.log 2>&1; echo "grid $be full rc=$? $(tail -1 logs/grid-$be.log | cut -c12-400)"; grep -A3 FAIL logs/grid-$be.log | head -8
done
tar czf $OUT/logs.tgz logs
